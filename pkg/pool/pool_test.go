package pool

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestValidateID(t *testing.T) {
	good := []string{"a", "pv-0123", "fake-vol-id-1234", strings.Repeat("a", 64)}
	bad := []string{"", "-a", "a-", "A", "a/b", "..", "../x", "a..b/c", "a\x00b", "a b", "a.b", strings.Repeat("a", 65), "x/../../etc"}
	for _, id := range good {
		if err := ValidateID("id", id); err != nil {
			t.Errorf("ValidateID(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range bad {
		if err := ValidateID("id", id); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateID(%q) = %v, want ErrInvalid", id, err)
		}
	}
}

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	v := Volume{Schema: SchemaVersion, ID: "pv-1", Name: "n", Pool: "p", CapacityBytes: 4096, Mode: ModeFilesystem,
		FsType: "xfs", Source: &Source{SnapshotID: "sn-1"}, State: StateReady, CreatedAt: time.Unix(1700000000, 0).UTC()}
	path := filepath.Join(dir, "pv-1.json")
	if err := WriteRecord(path, v); err != nil {
		t.Fatal(err)
	}
	var got Volume
	if err := ReadRecord(path, &got); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(v, got); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
}

func TestReadRecordRejects(t *testing.T) {
	dir := t.TempDir()
	var v Volume
	if err := ReadRecord(filepath.Join(dir, "missing.json"), &v); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing record: %v, want ErrNotFound", err)
	}
	for name, content := range map[string]string{
		"future schema": `{"schema": 2, "id": "pv-1"}`,
		"no schema":     `{"id": "pv-1"}`,
		"torn write":    `{"schema": 1, "id": "pv`,
	} {
		p := filepath.Join(dir, "r.json")
		os.WriteFile(p, []byte(content), 0o600)
		if err := ReadRecord(p, &v); err == nil {
			t.Errorf("%s: ReadRecord accepted %q", name, content)
		}
	}
}

// A crash between creating the temp file and the rename leaves a temp file
// that OpenIndex removes; the records themselves are intact.
func TestOpenIndexCleansTempAndSkipsStrangers(t *testing.T) {
	dir := t.TempDir()
	vols, snaps := filepath.Join(dir, "v"), filepath.Join(dir, "s")
	x, err := OpenIndex(vols, snaps)
	if err != nil {
		t.Fatal(err)
	}
	v := Volume{ID: "pv-1", Name: "n", CapacityBytes: 8192, Mode: ModeBlock}
	if _, _, err := x.BeginVolume("p", v, func([]Volume, []Snapshot) (Stats, error) { return Stats{FreeBytes: 1 << 20}, nil }); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(vols, ".pv-2.json.tmp-123"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(vols, "NOT-AN-ID.json"), []byte("{}"), 0o600)
	x2, err := OpenIndex(vols, snaps)
	if err != nil {
		t.Fatal(err)
	}
	got := x2.Volumes()
	if len(got) != 1 || got[0].ID != "pv-1" || got[0].State != StateCreating {
		t.Fatalf("reloaded volumes = %+v, want pv-1 creating", got)
	}
	if _, err := os.Stat(filepath.Join(vols, ".pv-2.json.tmp-123")); !os.IsNotExist(err) {
		t.Error("temp file survived OpenIndex")
	}
}

func TestBeginVolumeReservesAtomically(t *testing.T) {
	x, err := OpenIndex(filepath.Join(t.TempDir(), "v"), filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	// 10 KiB free; each record commits its whole capacity while creating.
	stats := func(vols []Volume, _ []Snapshot) (Stats, error) {
		s := Stats{FreeBytes: 10240}
		for _, v := range vols {
			s.CommittedBytes += v.CapacityBytes
		}
		return s, nil
	}
	first := Volume{ID: "pv-1", Name: "a", CapacityBytes: 8192, Mode: ModeBlock}
	if _, done, err := x.BeginVolume("p", first, stats); err != nil || done {
		t.Fatalf("first: done=%v err=%v", done, err)
	}
	if _, _, err := x.BeginVolume("p", Volume{ID: "pv-2", Name: "b", CapacityBytes: 4096, Mode: ModeBlock}, stats); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("second: %v, want ErrNoSpace", err)
	}
	// Same request again resumes; a different one under the ID conflicts.
	if _, done, err := x.BeginVolume("p", first, stats); err != nil || done {
		t.Fatalf("retry: done=%v err=%v", done, err)
	}
	changed := first
	changed.CapacityBytes = 4096
	if _, _, err := x.BeginVolume("p", changed, stats); !errors.Is(err, ErrExists) {
		t.Fatalf("conflict: %v, want ErrExists", err)
	}
}
