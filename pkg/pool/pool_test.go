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
	v := Volume{Schema: VolumeRecords.Version(), ID: "pv-1", Name: "n", Pool: "p", CapacityBytes: 4096, Mode: ModeFilesystem,
		FsType: "xfs", Source: &Source{SnapshotID: "sn-1"}, State: StateReady, CreatedAt: time.Unix(1700000000, 0).UTC()}
	path := filepath.Join(dir, "pv-1.json")
	if err := VolumeRecords.Write(path, v); err != nil {
		t.Fatal(err)
	}
	var got Volume
	if err := ReadRecord(VolumeRecords, path, &got); err != nil {
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
	if err := ReadRecord(VolumeRecords, filepath.Join(dir, "missing.json"), &v); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing record: %v, want ErrNotFound", err)
	}
	for name, content := range map[string]string{
		"future schema": `{"schema": 2, "id": "pv-1"}`,
		"schema 0":      `{"schema": 0, "id": "pv-1"}`,
		"torn write":    `{"schema": 1, "id": "pv`,
	} {
		p := filepath.Join(dir, "r.json")
		os.WriteFile(p, []byte(content), 0o600)
		if err := ReadRecord(VolumeRecords, p, &v); err == nil {
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

// A snapshot records its source's mode and fs type; a volume made from a
// snapshot or a volume keeps them, whatever else the request says.
func TestSourceKeepsModeAndFsType(t *testing.T) {
	x, err := OpenIndex(filepath.Join(t.TempDir(), "v"), filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	free := func([]Volume, []Snapshot) (Stats, error) { return Stats{FreeBytes: 1 << 30}, nil }
	for _, v := range []Volume{
		{ID: "ext4", Name: "ext4", CapacityBytes: 16 << 20, Mode: ModeFilesystem, FsType: "ext4"},
		{ID: "blk", Name: "blk", CapacityBytes: 16 << 20, Mode: ModeBlock},
	} {
		v, _, err := x.BeginVolume("p", v, free)
		if err != nil {
			t.Fatal(err)
		}
		v.State = StateReady
		if err := x.PutVolume(v); err != nil {
			t.Fatal(err)
		}
		s, _, err := x.BeginSnapshot("p", Snapshot{ID: "sn-" + v.ID, Name: "sn-" + v.ID, SourceVolumeID: v.ID})
		if err != nil {
			t.Fatal(err)
		}
		if s.Mode != v.Mode || s.FsType != v.FsType {
			t.Fatalf("snapshot of %s records %q %q, want %q %q", v.ID, s.Mode, s.FsType, v.Mode, v.FsType)
		}
		s.State = StateReady
		if err := x.PutSnapshot(s); err != nil {
			t.Fatal(err)
		}
	}
	fs := func(fsType string) Volume {
		return Volume{ID: "new", Name: "new", CapacityBytes: 32 << 20, Mode: ModeFilesystem, FsType: fsType}
	}
	blk := Volume{ID: "new", Name: "new", CapacityBytes: 32 << 20, Mode: ModeBlock}
	cases := map[string]struct {
		v       Volume
		src     Source
		invalid bool
	}{
		"restore ext4 as ext4":                {fs("ext4"), Source{SnapshotID: "sn-ext4"}, false},
		"restore ext4 as xfs":                 {fs("xfs"), Source{SnapshotID: "sn-ext4"}, true},
		"restore ext4 as block":               {blk, Source{SnapshotID: "sn-ext4"}, true},
		"restore block as block":              {blk, Source{SnapshotID: "sn-blk"}, false},
		"restore block as ext4 (tenant data)": {fs("ext4"), Source{SnapshotID: "sn-blk"}, true},
		"restore block as no fs type":         {fs(""), Source{SnapshotID: "sn-blk"}, true},
		"clone ext4 as ext4":                  {fs("ext4"), Source{VolumeID: "ext4"}, false},
		"clone ext4 as btrfs":                 {fs("btrfs"), Source{VolumeID: "ext4"}, true},
		"clone ext4 as block":                 {blk, Source{VolumeID: "ext4"}, true},
		"clone block as xfs":                  {fs("xfs"), Source{VolumeID: "blk"}, true},
		"clone block as block":                {blk, Source{VolumeID: "blk"}, false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			c.v.Source = &c.src
			_, _, err := x.Source(c.v)
			if c.invalid != errors.Is(err, ErrInvalid) || !c.invalid && err != nil {
				t.Fatalf("Source = %v, want invalid=%v", err, c.invalid)
			}
		})
	}
}

// Snapshot records written before plinth recorded modes still load; each
// gets its mode from its source volume's record, written back, but only
// from the volume it was taken of.
func TestOldSnapshotRecordsGetTheirSourcesMode(t *testing.T) {
	dir := t.TempDir()
	vols, snaps := filepath.Join(dir, "v"), filepath.Join(dir, "s")
	os.MkdirAll(vols, 0o700)
	os.MkdirAll(snaps, 0o700)
	write := func(path, content string) {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Volumes: a block volume made before its snapshot; one made again
	// under a snapshot's source ID after the snapshot.
	write(filepath.Join(vols, "blk.json"), `{"schema":1,"id":"blk","name":"blk","pool":"p","capacityBytes":16777216,"mode":"block","state":"ready","createdAt":"2024-01-01T00:00:00Z"}`)
	write(filepath.Join(vols, "again.json"), `{"schema":1,"id":"again","name":"again","pool":"p","capacityBytes":16777216,"mode":"filesystem","fsType":"ext4","state":"ready","createdAt":"2024-03-01T00:00:00Z"}`)
	old := func(id, src string) string {
		return `{"schema":1,"id":"` + id + `","name":"` + id + `","pool":"p","sourceVolumeID":"` + src + `","sizeBytes":16777216,"state":"ready","createdAt":"2024-02-01T00:00:00Z"}`
	}
	write(filepath.Join(snaps, "of-blk.json"), old("of-blk", "blk"))
	write(filepath.Join(snaps, "of-gone.json"), old("of-gone", "gone"))
	write(filepath.Join(snaps, "of-again.json"), old("of-again", "again"))

	x, err := OpenIndex(vols, snaps)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Mode{"of-blk": ModeBlock, "of-gone": "", "of-again": ""}
	for id, mode := range want {
		s, err := x.Snapshot(id)
		if err != nil {
			t.Fatal(err)
		}
		if s.Mode != mode || s.FsType != "" {
			t.Errorf("%s: mode %q fs %q, want %q", id, s.Mode, s.FsType, mode)
		}
	}
	// Written back: the mode outlives the source volume's record.
	if err := x.DropVolume("blk"); err != nil {
		t.Fatal(err)
	}
	x2, err := OpenIndex(vols, snaps)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := x2.Snapshot("of-blk"); s.Mode != ModeBlock {
		t.Errorf("after the source is gone: mode %q, want block", s.Mode)
	}
	// A restore of the block snapshot as a filesystem is refused; the
	// unknown ones are left to the controller, which knows the backend.
	v := Volume{ID: "new", Name: "new", CapacityBytes: 32 << 20, Mode: ModeFilesystem, FsType: "ext4", Source: &Source{SnapshotID: "of-blk"}}
	if _, _, err := x2.Source(v); !errors.Is(err, ErrInvalid) {
		t.Errorf("filesystem restore of an old block snapshot: %v, want ErrInvalid", err)
	}
	v.Source = &Source{SnapshotID: "of-gone"}
	if _, _, err := x2.Source(v); err != nil {
		t.Errorf("restore of an unknown-mode snapshot at the pool: %v", err)
	}
}
