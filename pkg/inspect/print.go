package inspect

import (
	"encoding/json"
	"fmt"
	"github.com/plinth-dev/plinth/pkg/bytesize"
	"io"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Print writes v as a table (the per-kind layout), json or yaml.
func Print(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "", "table", "wide":
	default:
		return fmt.Errorf("output format %q: want table, json or yaml", format)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	switch v := v.(type) {
	case MoveReport:
		fmt.Fprintln(w, v.Line())
		return nil
	case DrainReport:
		fmt.Fprintf(tw, "drain of %s: %d moved, %d failed (rolled back), %d cannot move, %d pods evicted\n", v.Node, len(v.Moved), len(v.Failed), len(v.CannotMove), len(v.Evicted))
		for _, m := range v.Failed {
			fmt.Fprintf(tw, "  failed\t%s/%s\t%s\n", m.Namespace, m.Claim, m.Message)
		}
		for _, u := range v.CannotMove {
			fmt.Fprintf(tw, "  cannot move\t%s\t%s\n", u.Claim, u.Reason)
		}
		return nil
	case []MoveReport:
		fmt.Fprintln(tw, "NAMESPACE\tCLAIM\tFROM\tTO\tPHASE\tDONE\tTOTAL\tMESSAGE")
		for _, m := range v {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Namespace, m.Claim, dash(m.From), m.To, m.Phase,
				bytesize.Format(m.BytesDone), bytesize.Format(m.BytesTotal), m.Message)
		}
		return nil
	case []NodeReport:
		fmt.Fprintln(tw, "NODE\tPOOL\tBACKEND\tSIZE\tALLOCATABLE\tPROVISIONED\tVOLUMES\tHEALTHY\tHEARTBEAT")
		for _, n := range v {
			name := n.Name
			if n.NodeGone {
				name += " " + lostMark
			}
			if len(n.Pools) == 0 && len(n.Resources) == 0 {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%d\t-\t%s\n", name, n.VolumeObjects, n.Heartbeat)
			}
			for _, p := range n.Pools {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%t\t%s\n", name, p.Name, p.Backend, quantity(p.TotalBytes), quantity(p.AllocatableBytes),
					quantity(p.ProvisionedBytes), p.Volumes, p.Healthy, n.Heartbeat)
			}
			for _, r := range n.Resources {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d devices\t%d healthy\t%d allocated\t-\t%t\t%s\n", name, r.Resource, "device", r.Devices, r.Healthy,
					r.Allocated, r.Healthy == r.Devices, n.Heartbeat)
			}
		}
	case []VolumeReport:
		fmt.Fprintln(tw, "VOLUME\tCLAIM\tNODE\tPOOL\tMODE\tCAPACITY\tUSED\tPHASE\tSNAPSHOTS\tPODS")
		for _, r := range v {
			pods := strings.Join(r.Pods, ",")
			if pods == "" {
				pods = "<none>"
			}
			node := r.Node
			if r.NodeLost {
				node += " " + lostMark
			}
			used := "-"
			if r.UsedBytes != nil {
				used = quantity(*r.UsedBytes)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.ID, r.Claim, node, r.Pool, r.Mode, quantity(r.CapacityBytes), used, r.Phase,
				len(r.Snapshots), pods)
		}
	case []DeviceReport:
		fmt.Fprintln(tw, "NODE\tRESOURCE\tDEVICES\tUNHEALTHY\tFREE\tHELD BY")
		for _, r := range v {
			var held []string
			for _, h := range r.Holders {
				held = append(held, fmt.Sprintf("%s=%d", h.Pod, h.Count))
			}
			h := strings.Join(held, ",")
			if h == "" {
				h = "<none>"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", r.Node, r.Resource, len(r.Devices), len(r.Unhealthy), r.Free, h)
		}
	case []DiskReport:
		fmt.Fprintln(tw, "NODE\tDISK\tID\tSIZE\tTRANSPORT\tNUMA\tSTATE\tPOOL\tREASON")
		for _, d := range v {
			numa := "-"
			if d.NUMANode >= 0 {
				numa = fmt.Sprint(d.NUMANode)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Node, d.Name, d.ID, quantity(d.SizeBytes), d.Transport, numa, d.State,
				orDash(d.Pool), orDash(d.Reason))
		}
	case StatusReport:
		printStatus(tw, v)
	case Explanation:
		fmt.Fprintf(tw, "%s: %s\n", v.Object, v.Status)
		for _, r := range v.Reasons {
			fmt.Fprintf(tw, "  - %s\n", r)
		}
	default:
		return fmt.Errorf("no table for %T", v)
	}
	return nil
}

// lostMark follows the name of a node whose Node object has left the
// cluster.
const lostMark = "(LOST)"

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printStatus writes `kubectl plinth status`: the controller, the nodes,
// the versions, then what needs attention.
func printStatus(tw *tabwriter.Writer, s StatusReport) {
	leader := s.Controller.Leader
	if leader == "" {
		leader = "<none>"
	}
	fmt.Fprintf(tw, "CONTROLLER\tleader %s", leader)
	if s.Controller.Lease != "" {
		fmt.Fprintf(tw, " (Lease %s, renewed %s)", s.Controller.Lease, orDash(s.Controller.Renewed))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "REPLICA\tNODE\tVERSION\tREADY\tLEADER")
	for _, r := range s.Controller.Replicas {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%t\n", r.Name, orDash(r.Node), r.Version, r.Ready, r.Name == s.Controller.Leader)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tVERSION\tSTATE\tHEARTBEAT\tPOOLS\tDEVICES\tVOLUMES\tATTENTION")
	for _, n := range s.Nodes {
		var att []string
		for _, p := range n.UnhealthyPools {
			att = append(att, "pool "+p+" unhealthy")
		}
		for _, p := range n.DegradedPools {
			att = append(att, "pool "+p+" degraded")
		}
		for _, d := range n.MissingDisks {
			att = append(att, "disk "+d+" missing")
		}
		for _, d := range n.UnhealthyDevices {
			att = append(att, "device "+d+" unhealthy")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", n.Name, n.Version, n.State, n.Heartbeat, n.Pools, n.Devices, n.Volumes,
			orDash(strings.Join(att, ", ")))
	}
	fmt.Fprintln(tw)
	if s.MixedVersions {
		fmt.Fprintln(tw, "MIXED VERSIONS: "+s.versionLine())
		if len(s.Images) > 1 {
			fmt.Fprintln(tw, "  pods' images: "+s.imageLine())
		}
	} else {
		fmt.Fprintln(tw, "VERSION: "+s.versionLine())
	}
	if s.Healthy() {
		fmt.Fprintln(tw, "All well.")
		return
	}
	fmt.Fprintf(tw, "NEEDS ATTENTION (%d):\n", len(s.Problems))
	for _, p := range s.Problems {
		fmt.Fprintf(tw, "  - %s\n", p)
	}
}
