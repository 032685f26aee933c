package volume_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/volume"
)

const mib = int64(1 << 20)

// fileNode lays out two real file pools (ext4 and xfs by default) in temp
// dirs: creating, cloning and snapshotting need no loop device.
type fileNode []file.Config

func newFileNode(t *testing.T) fileNode {
	t.Helper()
	var out fileNode
	for _, c := range []file.Config{{Name: "fext4", FsType: "ext4"}, {Name: "fxfs", FsType: "xfs"}} {
		c.Dir = filepath.Join(t.TempDir(), c.Name)
		if err := os.MkdirAll(c.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// controller opens the pools (again: what a restart does) under a
// controller with this one node, n1.
func (f fileNode) controller(t *testing.T) *volume.Controller {
	t.Helper()
	var pools []pool.Pool
	for _, c := range f {
		p, err := file.New(c)
		if err != nil {
			t.Fatal(err)
		}
		pools = append(pools, p)
	}
	n, err := node.NewLocal(pools...)
	if err != nil {
		t.Fatal(err)
	}
	return volume.NewController(map[string]volume.Node{"n1": n})
}

type volSummary struct {
	Pool     string
	Capacity int64
	Mode     pool.Mode
	FsType   string
	Thick    bool
}

func summary(t *testing.T, c *volume.Controller) map[string]volSummary {
	t.Helper()
	all, err := c.ListVolumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]volSummary{}
	for _, p := range all {
		v := p.Volume
		out[v.ID] = volSummary{v.Pool, v.CapacityBytes, v.Mode, v.FsType, v.Thick}
	}
	return out
}

// CreateVolume under a name already taken answers by the CSI spec's table:
// OK with the existing volume when the request is compatible with it
// (capacity within the range, same capability, parameters, source and
// topology), ALREADY_EXISTS otherwise; and a clone or restore keeps its
// source's mode and filesystem (INVALID_ARGUMENT before anything is made).
// "old:" notes what plinth answered before.
func TestCreateVolumeAgainstExisting(t *testing.T) {
	c := newFileNode(t).controller(t)
	ctx := context.Background()
	fs := volume.CreateRequest{Name: "fs", RequiredBytes: 64 * mib, Mode: pool.ModeFilesystem, FsType: "ext4", Params: volume.Params{Pool: "fext4"}}
	blk := volume.CreateRequest{Name: "blk", RequiredBytes: 32 * mib, Mode: pool.ModeBlock, Params: volume.Params{Pool: "fext4"}}
	ext4InXfs := volume.CreateRequest{Name: "ext4-in-fxfs", RequiredBytes: 16 * mib, Mode: pool.ModeFilesystem, FsType: "ext4", Params: volume.Params{Pool: "fxfs"}}
	for _, r := range []volume.CreateRequest{fs, blk, ext4InXfs} {
		if _, err := c.CreateVolume(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	snapFs, err := c.CreateSnapshot(ctx, "snap-fs", volume.VolumeID("fs"))
	if err != nil {
		t.Fatal(err)
	}
	snapBlk, err := c.CreateSnapshot(ctx, "snap-blk", volume.VolumeID("blk"))
	if err != nil {
		t.Fatal(err)
	}
	if got := snapBlk.Snapshot; got.Mode != pool.ModeBlock || got.FsType != "" {
		t.Fatalf("block snapshot records %q %q", got.Mode, got.FsType)
	}
	before := summary(t, c)

	with := func(r volume.CreateRequest, mod func(*volume.CreateRequest)) volume.CreateRequest { mod(&r); return r }
	clone := func(name, src string, mode pool.Mode, fsType string) volume.CreateRequest {
		return volume.CreateRequest{Name: name, RequiredBytes: 64 * mib, Mode: mode, FsType: fsType, Source: &pool.Source{VolumeID: volume.VolumeID(src)}}
	}
	restore := func(name string, snap volume.PlacedSnapshot, mode pool.Mode, fsType string) volume.CreateRequest {
		return volume.CreateRequest{Name: name, RequiredBytes: 64 * mib, Mode: mode, FsType: fsType, Source: &pool.Source{SnapshotID: snap.Snapshot.ID}}
	}
	// old: what plinth answered before ("same": the same as now; these
	// cases guard what was already right).
	cases := map[string]struct {
		req     volume.CreateRequest
		wantErr error       // nil: OK
		made    *volSummary // the new volume (capacity not compared); nil: none
		old     string
	}{
		// Retries the existing volume answers: its capacity is within the
		// range (old: the size was recomputed and compared for equality).
		"same name, smaller required": {with(fs, func(r *volume.CreateRequest) { r.RequiredBytes = 32 * mib }), nil, nil, "ALREADY_EXISTS"},
		"same name, no range":         {with(fs, func(r *volume.CreateRequest) { r.RequiredBytes = 0 }), nil, nil, "ALREADY_EXISTS"},
		"same name, limit above":      {with(fs, func(r *volume.CreateRequest) { r.RequiredBytes, r.LimitBytes = 16*mib, 1<<30 }), nil, nil, "ALREADY_EXISTS"},
		"same name, block, no range":  {with(blk, func(r *volume.CreateRequest) { r.RequiredBytes = 0 }), nil, nil, "ALREADY_EXISTS"},
		"same name, no fs type":       {with(fs, func(r *volume.CreateRequest) { r.FsType = "" }), nil, nil, "same"},
		"same name, backend file":     {with(fs, func(r *volume.CreateRequest) { r.Params = volume.Params{Backend: "file"} }), nil, nil, "same"},
		"same name, on its node":      {with(fs, func(r *volume.CreateRequest) { r.Requisite = []string{"n1"} }), nil, nil, "same"},
		"same request again":          {fs, nil, nil, "same"},
		"same name, required above":   {with(fs, func(r *volume.CreateRequest) { r.RequiredBytes = 128 * mib }), pool.ErrExists, nil, "same"},
		"same name, limit below":      {with(fs, func(r *volume.CreateRequest) { r.RequiredBytes, r.LimitBytes = 0, 32*mib }), pool.ErrExists, nil, "same"},
		"same name, impossible range": {with(fs, func(r *volume.CreateRequest) { r.RequiredBytes, r.LimitBytes = 64*mib, 32*mib }), pool.ErrOutOfRange, nil, "same"},
		// Incompatible parameters, capability, source or topology.
		"same name, other pool":          {with(fs, func(r *volume.CreateRequest) { r.Params.Pool = "fxfs" }), pool.ErrExists, nil, "OK, the old volume"},
		"same name, block in other pool": {with(blk, func(r *volume.CreateRequest) { r.Params.Pool = "fxfs" }), pool.ErrExists, nil, "OK, the old volume"},
		"same name, other backend":       {with(fs, func(r *volume.CreateRequest) { r.Params = volume.Params{Backend: "btrfs"} }), pool.ErrExists, nil, "OK, the old volume"},
		"same name, other node":          {with(fs, func(r *volume.CreateRequest) { r.Requisite = []string{"n2"} }), pool.ErrExists, nil, "RESOURCE_EXHAUSTED"},
		"same name, thick":               {with(fs, func(r *volume.CreateRequest) { r.Params.Thick = true }), pool.ErrExists, nil, "same"},
		"same name, other fs type":       {with(fs, func(r *volume.CreateRequest) { r.FsType = "xfs" }), pool.ErrExists, nil, "same"},
		"same name, block":               {with(fs, func(r *volume.CreateRequest) { r.Mode, r.FsType = pool.ModeBlock, "" }), pool.ErrExists, nil, "same"},
		"same name, with a source":       {with(fs, func(r *volume.CreateRequest) { r.Source = &pool.Source{SnapshotID: snapFs.Snapshot.ID} }), pool.ErrExists, nil, "same"},
		// Clones and restores keep their source's mode and filesystem.
		"clone ext4 as xfs":              {clone("c1", "fs", pool.ModeFilesystem, "xfs"), pool.ErrInvalid, nil, "OK, an xfs volume holding ext4"},
		"clone ext4 as block":            {clone("c2", "fs", pool.ModeBlock, ""), pool.ErrInvalid, nil, "same"},
		"clone block as ext4":            {clone("c3", "blk", pool.ModeFilesystem, "ext4"), pool.ErrInvalid, nil, "same"},
		"restore block snapshot as ext4": {restore("r1", snapBlk, pool.ModeFilesystem, "ext4"), pool.ErrInvalid, nil, "OK, the tenant's image mountable"},
		"restore block snapshot, no fs":  {restore("r2", snapBlk, pool.ModeFilesystem, ""), pool.ErrInvalid, nil, "OK, the tenant's image mountable"},
		"restore ext4 snapshot as xfs":   {restore("r3", snapFs, pool.ModeFilesystem, "xfs"), pool.ErrInvalid, nil, "OK"},
		"restore ext4 snapshot as block": {restore("r4", snapFs, pool.ModeBlock, ""), pool.ErrInvalid, nil, "OK"},
		"restore into another pool": {with(restore("r5", snapFs, pool.ModeFilesystem, ""), func(r *volume.CreateRequest) { r.Params.Pool = "fxfs" }),
			pool.ErrInvalid, nil, "OK, in the snapshot's pool (a retry then conflicted)"},
		"restore ext4 snapshot as ext4":   {restore("r6", snapFs, pool.ModeFilesystem, "ext4"), nil, &volSummary{Pool: "fext4", Mode: pool.ModeFilesystem, FsType: "ext4"}, "same"},
		"restore block snapshot as block": {restore("r7", snapBlk, pool.ModeBlock, ""), nil, &volSummary{Pool: "fext4", Mode: pool.ModeBlock}, "same"},
		// No fs type asked: the source's, not the pool's default.
		"clone ext4 in an xfs pool, no fs": {clone("c4", "ext4-in-fxfs", pool.ModeFilesystem, ""), nil,
			&volSummary{Pool: "fxfs", Mode: pool.ModeFilesystem, FsType: "ext4"}, "OK, an xfs volume holding ext4"},
	}
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		tc := cases[name]
		t.Run(name, func(t *testing.T) {
			got, err := c.CreateVolume(ctx, tc.req)
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) || tc.wantErr == nil && err != nil {
				t.Errorf("got %v, want %v (old: %s)", err, tc.wantErr, tc.old)
			}
			id := volume.VolumeID(tc.req.Name)
			if tc.made == nil && err == nil && (got.Volume.ID != id || got.Volume.CapacityBytes != before[id].Capacity) {
				t.Errorf("answered %s of %d bytes, want the existing %s of %d", got.Volume.ID, got.Volume.CapacityBytes, id, before[id].Capacity)
			}
			// What exists afterwards: the volumes of before, unchanged,
			// and the new one if one was to be made (removed again, so
			// that each case starts from the same state).
			after := summary(t, c)
			made := map[string]volSummary{}
			for vid, s := range after {
				if _, ok := before[vid]; !ok {
					made[vid] = s
					delete(after, vid)
					if err := c.DeleteVolume(ctx, vid); err != nil {
						t.Fatal(err)
					}
				}
			}
			want := map[string]volSummary{}
			if tc.made != nil {
				want[id] = *tc.made
			}
			for vid, s := range made {
				s.Capacity = 0 // not what these cases are about
				made[vid] = s
			}
			if d := cmp.Diff(want, made); d != "" {
				t.Errorf("volumes made (-want +got):\n%s", d)
			}
			if d := cmp.Diff(before, after); d != "" {
				t.Errorf("existing volumes changed (-before +after):\n%s", d)
			}
		})
	}
}

// A volume whose delete was interrupted is not an existing volume: a create
// under its name finishes the delete and makes the volume asked for now
// (old: ALREADY_EXISTS, compared with the half-deleted volume).
func TestCreateVolumeAfterInterruptedDelete(t *testing.T) {
	f := newFileNode(t)
	c := f.controller(t)
	ctx := context.Background()
	req := volume.CreateRequest{Name: "v", RequiredBytes: 16 * mib, Mode: pool.ModeBlock, Params: volume.Params{Pool: "fext4"}}
	placed, err := c.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// What a crash part-way through DeleteVolume leaves.
	idx, err := pool.OpenIndex(filepath.Join(f[0].Dir, "volumes"), filepath.Join(f[0].Dir, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	if err := idx.MarkDeleting(placed.Volume.ID); err != nil {
		t.Fatal(err)
	}
	c = f.controller(t)
	req.RequiredBytes, req.Params.Pool = 32*mib, "fxfs"
	got, err := c.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got.Volume.Pool != "fxfs" || got.Volume.CapacityBytes != 32*mib || got.Volume.State != pool.StateReady {
		t.Fatalf("got %+v, want a new 32Mi volume in fxfs", got.Volume)
	}
	if d := cmp.Diff(map[string]volSummary{got.Volume.ID: {"fxfs", 32 * mib, pool.ModeBlock, "", false}}, summary(t, c)); d != "" {
		t.Errorf("volumes (-want +got):\n%s", d)
	}
}

// A clone or restore asked smaller than its source gets the source's size
// (the CSI spec lets a volume be larger than asked, within the limit); a
// limit below the source's size is OUT_OF_RANGE and makes nothing.
func TestCreateFromSourceRoundsUp(t *testing.T) {
	ctx := context.Background()
	c := newFileNode(t).controller(t)
	if _, err := c.CreateVolume(ctx, volume.CreateRequest{Name: "src", RequiredBytes: 64 * mib, Mode: pool.ModeBlock}); err != nil {
		t.Fatal(err)
	}
	snap, err := c.CreateSnapshot(ctx, "snap", volume.VolumeID("src"))
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []*pool.Source{{SnapshotID: snap.Snapshot.ID}, {VolumeID: volume.VolumeID("src")}} {
		name := "from-" + src.SnapshotID + src.VolumeID
		got, err := c.CreateVolume(ctx, volume.CreateRequest{Name: name, RequiredBytes: 8 * mib, Mode: pool.ModeBlock, Source: src})
		if err != nil || got.Volume.CapacityBytes != 64*mib {
			t.Fatalf("from %+v asking 8 MiB: %+v, %v; want 64 MiB", src, got.Volume, err)
		}
		_, err = c.CreateVolume(ctx, volume.CreateRequest{Name: name + "-limited", RequiredBytes: 8 * mib, LimitBytes: 32 * mib, Mode: pool.ModeBlock, Source: src})
		if !errors.Is(err, pool.ErrOutOfRange) {
			t.Fatalf("from %+v with a 32 MiB limit: %v; want out of range", src, err)
		}
		if _, err := c.GetVolume(ctx, volume.VolumeID(name+"-limited")); !errors.Is(err, pool.ErrNotFound) {
			t.Fatalf("the refused volume exists: %v", err)
		}
	}
}
