package csiclient

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/plinth-dev/plinth/pkg/bytesize"
)

// write prints v as json (the value itself: Volume, []Volume, Snapshot,
// []Snapshot, Expansion or Deleted) or as a table.
func write(w io.Writer, format string, v any) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	switch v := v.(type) {
	case Volume:
		volumeTable(tw, []Volume{v})
	case []Volume:
		volumeTable(tw, v)
	case Snapshot:
		snapshotTable(tw, []Snapshot{v})
	case []Snapshot:
		snapshotTable(tw, v)
	case Expansion:
		need := "no"
		if v.NodeExpansionRequired {
			need = "required"
		}
		fmt.Fprintln(tw, "ID\tCAPACITY\tNODE EXPANSION")
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.VolumeID, bytesize.Format(v.CapacityBytes), need)
	case Deleted:
		if v.NotFound {
			fmt.Fprintf(tw, "%s %s did not exist; nothing deleted\n", v.Kind, v.ID)
			break
		}
		fmt.Fprintf(tw, "%s %s deleted\n", v.Kind, v.ID)
	default:
		return fmt.Errorf("no table for %T", v)
	}
	return tw.Flush()
}

func volumeTable(w io.Writer, vs []Volume) {
	fmt.Fprintln(w, "ID\tCAPACITY\tNODE\tPOOL\tMODE\tFSTYPE\tSOURCE")
	for _, v := range vs {
		var nodes []string
		for _, seg := range v.Topology {
			for _, k := range slices.Sorted(maps.Keys(seg)) {
				nodes = append(nodes, seg[k])
			}
		}
		source := "-"
		switch {
		case v.SourceSnapshotID != "":
			source = "snapshot " + v.SourceSnapshotID
		case v.SourceVolumeID != "":
			source = "volume " + v.SourceVolumeID
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, bytesize.Format(v.CapacityBytes), orDash(strings.Join(nodes, ",")),
			orDash(v.Context["pool"]), orDash(v.Context["mode"]), orDash(v.Context["fsType"]), source)
	}
}

func snapshotTable(w io.Writer, ss []Snapshot) {
	fmt.Fprintln(w, "ID\tSOURCE VOLUME\tSIZE\tREADY\tCREATED")
	for _, s := range ss {
		created := "-"
		if !s.CreationTime.IsZero() {
			created = s.CreationTime.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%t\t%s\n", s.ID, s.SourceVolumeID, bytesize.Format(s.SizeBytes), s.ReadyToUse, created)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
