package standalone

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/test/testenv"
)

// listed is what ListVolumes says of one volume.
type listed struct {
	Capacity int64
	Context  map[string]string // pool, mode, fsType
	Source   string
}

func listVolumes(t *testing.T, c *testenv.Client) map[string]listed {
	t.Helper()
	resp, err := c.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]listed{}
	for _, e := range resp.GetEntries() {
		v := e.GetVolume()
		src := ""
		if cs := v.GetContentSource(); cs != nil {
			src = cs.GetSnapshot().GetSnapshotId() + cs.GetVolume().GetVolumeId()
		}
		out[v.GetVolumeId()] = listed{v.GetCapacityBytes(), v.GetVolumeContext(), src}
	}
	return out
}

func snapshot(t *testing.T, c *testenv.Client, name, volumeID string) string {
	t.Helper()
	resp, err := c.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volumeID})
	if err != nil {
		t.Fatalf("snapshot %s: %v", name, err)
	}
	return resp.GetSnapshot().GetSnapshotId()
}

func createReq(name, pool string, cap *csi.VolumeCapability, required int64) *csi.CreateVolumeRequest {
	r := &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: required},
		VolumeCapabilities: []*csi.VolumeCapability{cap}, Parameters: map[string]string{}}
	if pool != "" {
		r.Parameters["pool"] = pool
	}
	return r
}

func fromSnapshot(r *csi.CreateVolumeRequest, id string) *csi.CreateVolumeRequest {
	r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	return r
}

func fromVolume(r *csi.CreateVolumeRequest, id string) *csi.CreateVolumeRequest {
	r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
	return r
}

// createCase is one CreateVolume against existing volumes and snapshots:
// the code the CSI spec asks for and what exists afterwards.
type createCase struct {
	req  *csi.CreateVolumeRequest
	code codes.Code
	// made: the new volume's context (pool, mode, fsType); nil: none is
	// made, and an OK answer is the existing volume of that name.
	made map[string]string
	// stage: the new volume must stage and unstage (a filesystem volume
	// whose fs type is not what its image holds never stages).
	stage bool
	// old: what plinth answered before this rule ("same": the case guards
	// what was already right).
	old string
}

// runCreateCases runs each case in name order against plinth at c; before
// and after each, ListVolumes must show the same volumes, unchanged, apart
// from the one a case is to make (removed again afterwards; one that cannot
// be removed is reported and left out of later cases).
func runCreateCases(t *testing.T, e *env, c *testenv.Client, cases map[string]createCase) {
	ctx := context.Background()
	before := listVolumes(t, c)
	stale := map[string]bool{}
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		tc := cases[name]
		t.Run(name, func(t *testing.T) {
			resp, err := c.CreateVolume(ctx, tc.req)
			if got := status.Code(err); got != tc.code {
				t.Errorf("CreateVolume: %v, want %v (old: %s)", err, tc.code, tc.old)
			}
			id := volumeIDFunc(tc.req.GetName())
			if err == nil && tc.code == codes.OK && tc.made == nil {
				if v := resp.GetVolume(); v.GetVolumeId() != id || v.GetCapacityBytes() != before[id].Capacity {
					t.Errorf("answered %s of %d bytes, want the existing %s of %d", v.GetVolumeId(), v.GetCapacityBytes(), id, before[id].Capacity)
				}
			}
			if err == nil && tc.made != nil && tc.stage {
				staging := filepath.Join(e.root, tc.req.GetName()+"-staging")
				cap := tc.req.GetVolumeCapabilities()[0]
				if _, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: cap}); err != nil {
					t.Errorf("stage the new volume: %v (old: %s)", err, tc.old)
				} else if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
					t.Errorf("unstage the new volume: %v", err)
				}
			}
			after := listVolumes(t, c)
			made := map[string]map[string]string{}
			for vid, v := range after {
				if _, ok := before[vid]; ok {
					continue
				}
				delete(after, vid)
				if stale[vid] {
					continue
				}
				made[vid] = v.Context
				if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vid}); err != nil {
					t.Errorf("remove the new volume: %v", err)
					stale[vid] = true
				}
			}
			want := map[string]map[string]string{}
			if tc.made != nil {
				want[id] = tc.made
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

// TestCreateVolumeSpecAnswers: CreateVolume under a name already taken, and
// clones and restores, on real file (ext4, xfs, block) and btrfs pools,
// answer by the CSI spec's CreateVolume table: the same name with a
// compatible request is OK with the existing volume; with other parameters,
// capability, source or topology ALREADY_EXISTS; a clone or restore that
// changes its source's mode or filesystem INVALID_ARGUMENT, and nothing is
// made. The block volume holds an ext4 image its tenant wrote, with a
// setuid-root file: restoring its snapshot as a filesystem would mount it.
func TestCreateVolumeSpecAnswers(t *testing.T) {
	e := newEnv(t)
	c := testenv.Dial(t, testenv.Standalone(t, e.cfg))
	ctx := context.Background()
	fsCap, blkCap := testenv.MountCap(""), testenv.BlockCap()

	// Existing state.
	fs := createReq("fs", "fext4", fsCap, 64<<20)
	blk := createReq("blk", "fext4", blkCap, 32<<20)
	ext4InXfs := createReq("ext4-in-fxfs", "fxfs", testenv.MountCap("ext4"), 16<<20)
	bt := createReq("bt", "bt", fsCap, 64<<20)
	ids := map[string]string{}
	for _, r := range []*csi.CreateVolumeRequest{fs, blk, ext4InXfs, bt} {
		resp, err := c.CreateVolume(ctx, r)
		if err != nil {
			t.Fatalf("create %s: %v", r.GetName(), err)
		}
		ids[r.GetName()] = resp.GetVolume().GetVolumeId()
	}
	// The tenant of the block volume writes an ext4 image into it.
	bv := &vol{name: "blk", pool: "fext4", cap: blkCap, size: 32 << 20, id: ids["blk"]}
	dev := e.stagePublish(t, c, bv)
	tenantImage(t, dev)
	e.unpublishUnstage(t, c, bv)
	// The ext4 volume in the xfs pool holds ext4.
	xv := &vol{name: "ext4-in-fxfs", pool: "fxfs", cap: testenv.MountCap("ext4"), size: 16 << 20, id: ids["ext4-in-fxfs"]}
	e.stagePublish(t, c, xv)
	e.unpublishUnstage(t, c, xv)
	snapFs := snapshot(t, c, "snap-fs", ids["fs"])
	snapBlk := snapshot(t, c, "snap-blk", ids["blk"])
	snapBt := snapshot(t, c, "snap-bt", ids["bt"])

	with := func(r *csi.CreateVolumeRequest, mod func(r *csi.CreateVolumeRequest)) *csi.CreateVolumeRequest {
		r = cloneReq(r)
		mod(r)
		return r
	}
	ext4, xfs, btrfs := testenv.MountCap("ext4"), testenv.MountCap("xfs"), testenv.MountCap("btrfs")
	ctxOf := func(pool, mode, fsType string) map[string]string {
		m := map[string]string{"pool": pool, "mode": mode}
		if fsType != "" {
			m["fsType"] = fsType
		}
		return m
	}
	elsewhere := &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{"topology.plinth.example.com/node": "node-2"}}}}
	here := &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{"topology.plinth.example.com/node": "node-1"}}}}
	cases := map[string]createCase{
		// The same name: a capacity range the volume satisfies is OK.
		"file: same name, smaller required": {req: with(fs, func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 32 << 20 }), code: codes.OK, old: "ALREADY_EXISTS"},
		"file: same name, no range":         {req: with(fs, func(r *csi.CreateVolumeRequest) { r.CapacityRange = nil }), code: codes.OK, old: "ALREADY_EXISTS"},
		"file: same name, limit above": {req: with(fs, func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 8 << 20, LimitBytes: 1 << 30}
		}),
			code: codes.OK, old: "ALREADY_EXISTS"},
		"block: same name, smaller required": {req: with(blk, func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 4 << 20 }), code: codes.OK, old: "ALREADY_EXISTS"},
		"btrfs: same name, smaller required": {req: with(bt, func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 16 << 20 }), code: codes.OK, old: "ALREADY_EXISTS"},
		"file: same request again":           {req: fs, code: codes.OK, old: "same"},
		"file: same name, its fs type named": {req: with(fs, func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = ext4 }), code: codes.OK, old: "same"},
		"file: same name, backend file":      {req: with(fs, func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"backend": "file"} }), code: codes.OK, old: "same"},
		"file: same name, its node":          {req: with(fs, func(r *csi.CreateVolumeRequest) { r.AccessibilityRequirements = here }), code: codes.OK, old: "same"},
		"file: same name, required above":    {req: with(fs, func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 128 << 20 }), code: codes.AlreadyExists, old: "same"},
		"file: same name, limit below": {req: with(fs, func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{LimitBytes: 32 << 20} }),
			code: codes.AlreadyExists, old: "same"},
		// The same name with other parameters, capability, source or
		// topology is another volume: ALREADY_EXISTS.
		"file: same name, other pool":     {req: with(fs, func(r *csi.CreateVolumeRequest) { r.Parameters["pool"] = "fxfs" }), code: codes.AlreadyExists, old: "OK, the old volume"},
		"block: same name, other pool":    {req: with(blk, func(r *csi.CreateVolumeRequest) { r.Parameters["pool"] = "fxfs" }), code: codes.AlreadyExists, old: "OK, the old volume"},
		"btrfs: same name, other pool":    {req: with(bt, func(r *csi.CreateVolumeRequest) { r.Parameters["pool"] = "fext4" }), code: codes.AlreadyExists, old: "OK, the old volume"},
		"file: same name, backend btrfs":  {req: with(fs, func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"backend": "btrfs"} }), code: codes.AlreadyExists, old: "OK, the old volume"},
		"btrfs: same name, backend file":  {req: with(bt, func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"backend": "file"} }), code: codes.AlreadyExists, old: "OK, the old volume"},
		"file: same name, other node":     {req: with(fs, func(r *csi.CreateVolumeRequest) { r.AccessibilityRequirements = elsewhere }), code: codes.AlreadyExists, old: "RESOURCE_EXHAUSTED"},
		"file: same name, thick":          {req: with(fs, func(r *csi.CreateVolumeRequest) { r.Parameters["provisioning"] = "thick" }), code: codes.AlreadyExists, old: "same"},
		"file: same name, other fs type":  {req: with(fs, func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = xfs }), code: codes.AlreadyExists, old: "same"},
		"file: same name, block":          {req: with(fs, func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = blkCap }), code: codes.AlreadyExists, old: "same"},
		"file: same name, with a source":  {req: fromSnapshot(cloneReq(fs), snapFs), code: codes.AlreadyExists, old: "same"},
		"btrfs: same name, other fs type": {req: with(bt, func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = ext4 }), code: codes.AlreadyExists, old: "same"},
		// A clone or restore keeps its source's mode and filesystem.
		"block: restore as ext4 (the tenant's image)": {req: fromSnapshot(createReq("r-blk-ext4", "", ext4, 32<<20), snapBlk), code: codes.InvalidArgument,
			old: "OK: the tenant's ext4 image stages, setuid file and all"},
		"block: restore as filesystem, no fs type": {req: fromSnapshot(createReq("r-blk-fs", "", fsCap, 32<<20), snapBlk), code: codes.InvalidArgument,
			old: "OK: an ext4 volume holding the tenant's image"},
		"file: restore ext4 as xfs":   {req: fromSnapshot(createReq("r-fs-xfs", "", xfs, 320<<20), snapFs), code: codes.InvalidArgument, old: "OK: an xfs volume holding ext4"},
		"file: restore ext4 as block": {req: fromSnapshot(createReq("r-fs-blk", "", blkCap, 64<<20), snapFs), code: codes.InvalidArgument, old: "OK"},
		"file: clone ext4 as xfs":     {req: fromVolume(createReq("c-fs-xfs", "", xfs, 320<<20), ids["fs"]), code: codes.InvalidArgument, old: "OK: an xfs volume holding ext4"},
		"file: clone ext4 as block":   {req: fromVolume(createReq("c-fs-blk", "", blkCap, 64<<20), ids["fs"]), code: codes.InvalidArgument, old: "same"},
		"block: clone as ext4":        {req: fromVolume(createReq("c-blk-ext4", "", ext4, 32<<20), ids["blk"]), code: codes.InvalidArgument, old: "same"},
		"file: restore into another pool": {req: fromSnapshot(createReq("r-fs-fxfs", "fxfs", fsCap, 64<<20), snapFs), code: codes.InvalidArgument,
			old: "OK, made in the snapshot's pool"},
		"btrfs: restore as ext4":  {req: fromSnapshot(createReq("r-bt-ext4", "", ext4, 64<<20), snapBt), code: codes.InvalidArgument, old: "same"},
		"btrfs: restore as block": {req: fromSnapshot(createReq("r-bt-blk", "", blkCap, 64<<20), snapBt), code: codes.InvalidArgument, old: "same"},
		// A clone with no fs type holds its source's filesystem, not the
		// pool's default.
		"file: clone ext4 in an xfs pool, no fs type": {req: fromVolume(createReq("c-ext4x", "", fsCap, 16<<20), ids["ext4-in-fxfs"]), code: codes.OK,
			made: ctxOf("fxfs", "filesystem", "ext4"), stage: true, old: "OK, but an xfs volume holding ext4 that never stages"},
		"file: restore ext4 as ext4": {req: fromSnapshot(createReq("r-fs-ext4", "", ext4, 64<<20), snapFs), code: codes.OK,
			made: ctxOf("fext4", "filesystem", "ext4"), stage: true, old: "same"},
		"block: restore as block": {req: fromSnapshot(createReq("r-blk-blk", "", blkCap, 32<<20), snapBlk), code: codes.OK,
			made: ctxOf("fext4", "block", ""), old: "same"},
		"btrfs: restore, no fs type": {req: fromSnapshot(createReq("r-bt", "", fsCap, 64<<20), snapBt), code: codes.OK,
			made: ctxOf("bt", "filesystem", "btrfs"), stage: true, old: "same"},
		"btrfs: restore as btrfs": {req: fromSnapshot(createReq("r-bt-btrfs", "", btrfs, 64<<20), snapBt), code: codes.OK,
			made: ctxOf("bt", "filesystem", "btrfs"), old: "same"},
	}
	runCreateCases(t, e, c, cases)
}

func cloneReq(r *csi.CreateVolumeRequest) *csi.CreateVolumeRequest {
	out := &csi.CreateVolumeRequest{Name: r.GetName(), Parameters: map[string]string{},
		VolumeCapabilities: append([]*csi.VolumeCapability(nil), r.GetVolumeCapabilities()...), VolumeContentSource: r.GetVolumeContentSource()}
	if cr := r.GetCapacityRange(); cr != nil {
		out.CapacityRange = &csi.CapacityRange{RequiredBytes: cr.GetRequiredBytes(), LimitBytes: cr.GetLimitBytes()}
	}
	for k, v := range r.GetParameters() {
		out.Parameters[k] = v
	}
	return out
}

// tenantImage is what a hostile tenant of a block volume does: write an
// ext4 image holding a setuid-root shell into the device.
func tenantImage(t *testing.T, dev string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rootshell"), []byte("#!/bin/sh\nexec /bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "rootshell"), os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", dir, dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 on the block volume: %v: %s", err, out)
	}
}

// TestRestoreOfSnapshotsRecordedWithoutMode: snapshot records written before
// plinth recorded a snapshot's mode (no "mode" or "fsType") still load. One
// whose source volume still exists takes its mode from it at start, and
// keeps it on disk. One whose source is gone is of unknown mode: on a file
// pool it may be restored as a block volume only (never mounted: it may be a
// block volume's image); on btrfs, which holds nothing but btrfs
// filesystems, it restores as before.
func TestRestoreOfSnapshotsRecordedWithoutMode(t *testing.T) {
	e := newEnv(t)
	sock, stop := testenv.StandaloneStoppable(t, e.cfg)
	c := testenv.Dial(t, sock)
	ctx := context.Background()
	fsCap, blkCap, ext4 := testenv.MountCap(""), testenv.BlockCap(), testenv.MountCap("ext4")
	ids := map[string]string{}
	for _, r := range []*csi.CreateVolumeRequest{
		createReq("blk-kept", "fext4", blkCap, 16<<20), createReq("blk-gone", "fext4", blkCap, 16<<20),
		createReq("fs-gone", "fext4", fsCap, 16<<20), createReq("bt-gone", "bt", fsCap, 64<<20),
	} {
		resp, err := c.CreateVolume(ctx, r)
		if err != nil {
			t.Fatalf("create %s: %v", r.GetName(), err)
		}
		ids[r.GetName()] = resp.GetVolume().GetVolumeId()
	}
	snaps := map[string]string{}
	for _, name := range []string{"blk-kept", "blk-gone", "fs-gone", "bt-gone"} {
		snaps[name] = snapshot(t, c, "snap-"+name, ids[name])
	}
	for _, name := range []string{"blk-gone", "fs-gone", "bt-gone"} {
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[name]}); err != nil {
			t.Fatal(err)
		}
	}
	// Rewrite the snapshot records as an older plinth wrote them.
	stop()
	for _, id := range snaps {
		path := snapshotRecord(t, e, id)
		var rec map[string]any
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			t.Fatal(err)
		}
		delete(rec, "mode")
		delete(rec, "fsType")
		if b, err = json.Marshal(rec); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c = testenv.Dial(t, testenv.Standalone(t, e.cfg))

	// Filled in from the source volume that is still there, on disk.
	var rec struct{ Mode, FsType string }
	b, _ := os.ReadFile(snapshotRecord(t, e, snaps["blk-kept"]))
	if err := json.Unmarshal(b, &rec); err != nil || rec.Mode != "block" {
		t.Errorf("record of the snapshot whose source is there: mode %q (%v), want block", rec.Mode, err)
	}
	cases := map[string]createCase{
		"source there: block snapshot as ext4": {req: fromSnapshot(createReq("r1", "", ext4, 16<<20), snaps["blk-kept"]), code: codes.InvalidArgument,
			old: "OK: a block volume's image mounted"},
		"source gone: block snapshot as ext4": {req: fromSnapshot(createReq("r2", "", ext4, 16<<20), snaps["blk-gone"]), code: codes.InvalidArgument,
			old: "OK: a block volume's image mounted"},
		"source gone: block snapshot as filesystem, no fs type": {req: fromSnapshot(createReq("r3", "", fsCap, 16<<20), snaps["blk-gone"]), code: codes.InvalidArgument,
			old: "OK: a block volume's image mounted"},
		"source gone: ext4 snapshot as ext4 (unknowable)": {req: fromSnapshot(createReq("r4", "", ext4, 16<<20), snaps["fs-gone"]), code: codes.InvalidArgument,
			old: "OK (the price of the rule: restore as block, or keep the source)"},
		"source gone: block snapshot as block": {req: fromSnapshot(createReq("r5", "", blkCap, 16<<20), snaps["blk-gone"]), code: codes.OK,
			made: map[string]string{"pool": "fext4", "mode": "block"}, old: "same"},
		"source gone: ext4 snapshot as block": {req: fromSnapshot(createReq("r6", "", blkCap, 16<<20), snaps["fs-gone"]), code: codes.OK,
			made: map[string]string{"pool": "fext4", "mode": "block"}, old: "same"},
		"source there: block snapshot as block": {req: fromSnapshot(createReq("r7", "", blkCap, 16<<20), snaps["blk-kept"]), code: codes.OK,
			made: map[string]string{"pool": "fext4", "mode": "block"}, old: "same"},
		"source gone: btrfs snapshot as filesystem": {req: fromSnapshot(createReq("r8", "", fsCap, 64<<20), snaps["bt-gone"]), code: codes.OK,
			made: map[string]string{"pool": "bt", "mode": "filesystem", "fsType": "btrfs"}, stage: true, old: "same"},
	}
	runCreateCases(t, e, c, cases)
}

// snapshotRecord finds the record of snapshot id in the env's pools.
func snapshotRecord(t *testing.T, e *env, id string) string {
	t.Helper()
	for _, d := range e.poolDirs {
		p := filepath.Join(d, "snapshots", id+".json")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("no record of snapshot %s in %v", id, e.poolDirs)
	return ""
}
