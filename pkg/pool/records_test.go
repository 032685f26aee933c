package pool

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// v010 holds the records plinth v0.1.0 wrote (testdata/records/v0.1.0,
// its README says how they were made).
const v010 = "../../testdata/records/v0.1.0"

// copyPool copies a pool's records of v0.1.0 (pools/<name>) into a new
// directory and returns it.
func copyPool(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(v010, "pools", name))); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The volume and snapshot records v0.1.0 wrote for a file pool (a
// filesystem and a block volume, a snapshot, a clone, a restore), a btrfs
// pool (a volume and its snapshot) and a disk pool (a whole-disk volume)
// are read by this plinth as they were written.
func TestV010PoolRecords(t *testing.T) {
	created := cmpopts.IgnoreFields(Volume{}, "CreatedAt")
	snapCreated := cmpopts.IgnoreFields(Snapshot{}, "CreatedAt")
	fs := func(id, name, pool, fsType string, size int64) Volume {
		return Volume{Schema: 1, ID: id, Name: name, Pool: pool, CapacityBytes: size, Mode: ModeFilesystem, FsType: fsType, State: StateReady}
	}
	const fsVol = "pv-dee66db740340d89c2c93141cdd51960d3033113"
	clone := fs("pv-980136f2232a9773220b18962c58f60bb09e339f", "fs-clone", "files", "ext4", 64<<20)
	clone.Source = &Source{VolumeID: fsVol}
	restore := fs("pv-8c5ba2a15d65e7aa192e20f7015b6061fc3f48e9", "fs-restore", "files", "ext4", 64<<20)
	restore.Source = &Source{SnapshotID: "sn-733e21169bbafc161f10ae50f0c8a4b97a9ddc82"}
	btVol := fs("pv-7d39c98bb2902f2884b029d61a8e046c9cfa1d85", "bt-vol", "bt", "btrfs", 64<<20)
	btVol.Parameters = map[string]string{"btrfs.plinth.example.com/subvolume-id": "256"}
	whole := fs("pv-c762016223ee26b320b2538f0997bdf332f0d9eb", "disk-vol", "whole", "ext4", 64<<20)
	whole.Disk, whole.DiskHanded, whole.DiskFsUUID = "file:/tmp/rec/whole-disk.img", true, "a47254da-b400-4849-afdf-ea52a777968c"
	for _, c := range []struct {
		pool  string
		vols  []Volume
		snaps []Snapshot
	}{
		{"files", []Volume{
			{Schema: 1, ID: "pv-575f96dfe7187981b3c363803174d623e396d785", Name: "blk-vol", Pool: "files", CapacityBytes: 16 << 20, Mode: ModeBlock, State: StateReady},
			restore, clone, fs(fsVol, "fs-vol", "files", "ext4", 64<<20),
		}, []Snapshot{{Schema: 1, ID: "sn-733e21169bbafc161f10ae50f0c8a4b97a9ddc82", Name: "fs-snap", Pool: "files", SourceVolumeID: fsVol,
			Mode: ModeFilesystem, FsType: "ext4", SizeBytes: 64 << 20, State: StateReady}}},
		{"bt", []Volume{btVol}, []Snapshot{{Schema: 1, ID: "sn-6f8314e2502d37cb4ff0ac2faf0fa9370d3957fb", Name: "bt-snap", Pool: "bt",
			SourceVolumeID: btVol.ID, Mode: ModeFilesystem, FsType: "btrfs", SizeBytes: 64 << 20, State: StateReady}}},
		{"whole", []Volume{whole}, nil},
	} {
		dir := copyPool(t, c.pool)
		x, err := OpenIndex(filepath.Join(dir, "volumes"), filepath.Join(dir, "snapshots"))
		if err != nil {
			t.Fatalf("pool %s: %v", c.pool, err)
		}
		sortVols := cmpopts.SortSlices(func(a, b Volume) bool { return a.ID < b.ID })
		if d := cmp.Diff(c.vols, x.Volumes(), created, sortVols); d != "" {
			t.Errorf("pool %s volumes (-want +got):\n%s", c.pool, d)
		}
		if d := cmp.Diff(c.snaps, x.Snapshots(), snapCreated, cmpopts.EquateEmpty()); d != "" {
			t.Errorf("pool %s snapshots (-want +got):\n%s", c.pool, d)
		}
		for _, v := range x.Volumes() {
			if v.CreatedAt.Before(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)) {
				t.Errorf("pool %s: volume %s created %v", c.pool, v.ID, v.CreatedAt)
			}
		}
	}
}

// This plinth writes the versions v0.1.0 reads: each format's version is
// the one in every record of v0.1.0, so a rollback to v0.1.0 reads what
// this plinth wrote.
func TestWritesV010Versions(t *testing.T) {
	for _, c := range []struct {
		f    durable.Format
		glob string
	}{{VolumeRecords, "pools/*/volumes/*.json"}, {SnapshotRecords, "pools/*/snapshots/*.json"}} {
		files, _ := filepath.Glob(filepath.Join(v010, c.glob))
		if len(files) == 0 {
			t.Fatalf("no %s in %s", c.glob, v010)
		}
		for _, f := range files {
			if got := rawVersion(t, f, c.f.Field); got != c.f.Version() {
				t.Errorf("%s: v0.1.0 wrote version %d, this plinth writes %d", f, got, c.f.Version())
			}
		}
	}
}

func rawVersion(t *testing.T, path, field string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	var v int
	if err := json.Unmarshal(b, &m); err != nil || json.Unmarshal(m[field], &v) != nil {
		t.Fatalf("%s: no %s", path, field)
	}
	return v
}

// A volume or snapshot record of a newer version stops the pool's index
// from opening, with an error naming the file, its version and the newest
// this plinth reads; no record is changed, not even the older ones a
// successful open would have filled in (inheritModes).
func TestOpenIndexRefusesNewer(t *testing.T) {
	for _, kind := range []string{"volumes", "snapshots"} {
		dir := copyPool(t, "files")
		// A snapshot record without a mode: an open would write it back.
		snap := filepath.Join(dir, "snapshots", "sn-733e21169bbafc161f10ae50f0c8a4b97a9ddc82.json")
		b, _ := os.ReadFile(snap)
		b = []byte(strings.Replace(strings.Replace(string(b), `"mode": "filesystem",`, "", 1), `"fsType": "ext4",`, "", 1))
		os.WriteFile(snap, b, 0o600)
		newer := filepath.Join(dir, kind, "pv-dee66db740340d89c2c93141cdd51960d3033113.json")
		if kind == "snapshots" {
			newer = snap
		}
		b, _ = os.ReadFile(newer)
		os.WriteFile(newer, []byte(strings.Replace(string(b), `"schema": 1`, `"schema": 99`, 1)), 0o600)
		before := snapshotTree(t, dir)
		_, err := OpenIndex(filepath.Join(dir, "volumes"), filepath.Join(dir, "snapshots"))
		if !errors.Is(err, durable.ErrNewer) {
			t.Fatalf("%s: OpenIndex = %v, want ErrNewer", kind, err)
		}
		for _, s := range []string{newer, "version 99", "up to 1"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not say %q", kind, err, s)
			}
		}
		if d := cmp.Diff(before, snapshotTree(t, dir)); d != "" {
			t.Errorf("%s: records changed (-before +after):\n%s", kind, d)
		}
	}
}

// fileState is a file's bytes and modification time.
type fileState struct {
	Data  string
	MTime time.Time
}

// snapshotTree is every file under dir with its bytes and mtime.
func snapshotTree(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[p] = fileState{string(b), fi.ModTime()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
