// Records and versions, from an outside review: records whose version field a
// careless or newer writer made odd must be refused and left as they are.
package pool

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// DropVolume and DropSnapshot remove a record with durable.Remove, without
// Format.Guard: a record a newer plinth wrote after this index loaded is
// removed (docs: "every write and remove of a record first refuses one of
// a newer version"). MarkDeleting/PutVolume on the same path refuse it.
func TestAttackDropRefusesNewer(t *testing.T) {
	dir := t.TempDir()
	x, err := OpenIndex(filepath.Join(dir, "volumes"), filepath.Join(dir, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	v := Volume{Schema: 1, ID: "pv-a", Name: "a", Pool: "p", CapacityBytes: 1 << 20, Mode: ModeFilesystem, FsType: "ext4", State: StateReady}
	if err := x.PutVolume(v); err != nil {
		t.Fatal(err)
	}
	s := Snapshot{Schema: 1, ID: "sn-a", Name: "s", Pool: "p", SourceVolumeID: "pv-a", State: StateReady}
	if err := x.PutSnapshot(s); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		drop func() error
	}{
		{x.volRecord("pv-a"), func() error { return x.DropVolume("pv-a") }},
		{x.snapRecord("sn-a"), func() error { return x.DropSnapshot("sn-a") }},
	} {
		b, _ := os.ReadFile(c.path)
		newer := strings.Replace(string(b), `"schema": 1`, `"schema": 99`, 1)
		os.WriteFile(c.path, []byte(newer), 0o600)
		if c.path == x.volRecord("pv-a") {
			if err := x.MarkDeleting("pv-a"); !errors.Is(err, durable.ErrNewer) {
				t.Errorf("MarkDeleting = %v, want ErrNewer", err)
			}
		}
		err := c.drop()
		if !errors.Is(err, durable.ErrNewer) {
			t.Errorf("drop of %s = %v, want ErrNewer", c.path, err)
		}
		if got, _ := os.ReadFile(c.path); string(got) != newer {
			t.Errorf("%s: a record of version 99 was removed", c.path)
		}
	}
}

// A record without "schema" reads as version 1 (docs), but Decode leaves
// the struct's Schema at 0 (no conversion step runs for version 1), and
// Format.Encode then refuses every rewrite of it: MarkDeleting (so the
// volume's delete), an expand, inheritModes all fail with "schema is
// \"0\", this plinth writes version 1".
func TestAttackNoSchemaRecordCanBeRewritten(t *testing.T) {
	for name, field := range map[string]string{"absent": ``, "null": `"schema": null, `} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			vols := filepath.Join(dir, "volumes")
			os.MkdirAll(vols, 0o700)
			rec := `{` + field + `"id": "pv-a", "name": "a", "pool": "p", "capacityBytes": 1048576, "mode": "filesystem", "fsType": "ext4", "state": "ready", "createdAt": "2026-01-01T00:00:00Z"}`
			os.WriteFile(filepath.Join(vols, "pv-a.json"), []byte(rec), 0o600)
			x, err := OpenIndex(vols, filepath.Join(dir, "snapshots"))
			if err != nil {
				t.Fatalf("OpenIndex = %v", err)
			}
			if v, _ := x.Volume("pv-a"); v.Schema != VolumeRecords.Version() {
				t.Errorf("read as version 1, but Volume.Schema = %d", v.Schema)
			}
			if err := x.MarkDeleting("pv-a"); err != nil {
				t.Errorf("MarkDeleting of a record without schema = %v", err)
			}
		})
	}
}
