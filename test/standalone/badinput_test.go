package standalone

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/test/testenv"
)

// fingerprint summarises a tree: every path, mode, size and content hash.
func fingerprint(t *testing.T, roots ...string) string {
	t.Helper()
	var lines []string
	for _, root := range roots {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				lines = append(lines, p+" error "+err.Error())
				return nil
			}
			fi, _ := d.Info()
			line := fmt.Sprintf("%s %v %d", p, fi.Mode(), fi.Size())
			if fi.Mode().IsRegular() && !strings.HasSuffix(p, ".img") {
				b, _ := os.ReadFile(p)
				line += fmt.Sprintf(" %x", sha256.Sum256(b))
			}
			lines = append(lines, line)
			return nil
		})
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// mountsUnder lists the mounts below any of roots (other test packages
// mount and unmount elsewhere at the same time).
func mountsUnder(t *testing.T, roots ...string) string {
	var out []string
	m, err := mount.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range roots {
		for _, x := range m {
			if x.Under(r) {
				out = append(out, x.Mountpoint)
			}
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// TestBadInputChangesNothing sends requests with hostile or malformed
// fields; each gets the CSI spec's code and nothing is created, mounted,
// written or removed: the canary tree, the pools and the mount table are
// the same afterwards.
func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t)
	c := testenv.Dial(t, testenv.Standalone(t, e.cfg))
	ctx := context.Background()

	// A canary tree beside the allowed root, a symlink out of the allowed
	// root into it, and one into a pool.
	canary := filepath.Join(filepath.Dir(e.root), "canary")
	os.MkdirAll(filepath.Join(canary, "dir"), 0o755)
	os.WriteFile(filepath.Join(canary, "file"), []byte("do not touch"), 0o644)
	os.WriteFile(filepath.Join(canary, "dir", "nested"), []byte("nor this"), 0o644)
	os.Symlink(canary, filepath.Join(e.root, "to-canary"))
	os.Symlink(e.poolDirs[0], filepath.Join(e.root, "to-pool"))
	os.Symlink(filepath.Join(canary, "file"), filepath.Join(e.root, "link-target"))
	os.WriteFile(filepath.Join(e.root, "user-file"), []byte("a workload's data"), 0o644)

	// One good volume to aim the node calls at.
	good := &vol{name: "good", pool: "fext4", cap: testenv.MountCap(""), size: 32 << 20}
	create(t, c, good)
	staging := filepath.Join(e.root, "good-staging")

	watched := append([]string{canary, e.root}, e.poolDirs...)
	want := fingerprint(t, watched...)
	mounts := mountsUnder(t, watched...)

	mcap := testenv.MountCap("")
	withFlags := func(flags ...string) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
			AccessMode: mcap.AccessMode}
	}
	createReq := func(mod func(r *csi.CreateVolumeRequest)) *csi.CreateVolumeRequest {
		r := &csi.CreateVolumeRequest{Name: "bad", VolumeCapabilities: []*csi.VolumeCapability{mcap}, Parameters: map[string]string{"pool": "fext4"}}
		mod(r)
		return r
	}
	cases := map[string]struct {
		call func() error
		code codes.Code
	}{
		"delete ID with ..": {func() error {
			_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "../../canary"})
			return err
		}, codes.InvalidArgument},
		"delete ID with /": {func() error {
			_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: good.id + "/../x"})
			return err
		}, codes.InvalidArgument},
		"delete ID with NUL": {func() error { _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "pv\x00x"}); return err }, codes.InvalidArgument},
		"delete ID too long": {func() error {
			_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: strings.Repeat("a", 300)})
			return err
		}, codes.InvalidArgument},
		"expand ID with ..": {func() error {
			_, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "..", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}})
			return err
		}, codes.InvalidArgument},
		"snapshot source with ..": {func() error {
			_, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "../x"})
			return err
		}, codes.InvalidArgument},
		"delete snapshot with /": {func() error {
			_, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "a/b"})
			return err
		}, codes.InvalidArgument},
		"clone from ID with ..": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) {
				r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "../" + good.id}}}
			}))
			return err
		}, codes.NotFound},
		"pool parameter with ..": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) { r.Parameters["pool"] = "../fext4" }))
			return err
		}, codes.InvalidArgument},
		"unknown parameter": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) { r.Parameters["pol"] = "x" }))
			return err
		}, codes.InvalidArgument},
		"unknown pool": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) { r.Parameters["pool"] = "nope" }))
			return err
		}, codes.InvalidArgument},
		"fs type ntfs": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) {
				r.VolumeCapabilities = []*csi.VolumeCapability{testenv.MountCap("ntfs")}
			}))
			return err
		}, codes.InvalidArgument},
		"mount flag bind": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{withFlags("bind")} }))
			return err
		}, codes.InvalidArgument},
		"mount flag with comma": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) {
				r.VolumeCapabilities = []*csi.VolumeCapability{withFlags("ro,remount")}
			}))
			return err
		}, codes.InvalidArgument},
		"negative capacity": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: -1} }))
			return err
		}, codes.InvalidArgument},
		"required above limit": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) {
				r.CapacityRange = &csi.CapacityRange{RequiredBytes: 2 << 30, LimitBytes: 1 << 30}
			}))
			return err
		}, codes.OutOfRange},
		"an exabyte": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 60} }))
			return err
		}, codes.OutOfRange},
		"more than the pool has": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 40} }))
			return err
		}, codes.ResourceExhausted},
		"multi-node access": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) {
				r.VolumeCapabilities[0] = &csi.VolumeCapability{AccessType: mcap.AccessType, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
			}))
			return err
		}, codes.InvalidArgument},
		"name not UTF-8 (protobuf refuses it before sending)": {func() error {
			_, err := c.CreateVolume(ctx, createReq(func(r *csi.CreateVolumeRequest) { r.Name = "\xff\xfe" }))
			return err
		}, codes.Internal},
		"stage outside allowed": {func() error {
			_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: good.id, StagingTargetPath: filepath.Join(canary, "dir"), VolumeCapability: mcap})
			return err
		}, codes.InvalidArgument},
		"stage with ..": {func() error {
			_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: good.id, StagingTargetPath: e.root + "/../canary/dir", VolumeCapability: mcap})
			return err
		}, codes.InvalidArgument},
		"stage through a symlink": {func() error {
			_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: good.id, StagingTargetPath: filepath.Join(e.root, "to-canary", "dir"), VolumeCapability: mcap})
			return err
		}, codes.InvalidArgument},
		"stage into a pool": {func() error {
			_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: good.id, StagingTargetPath: filepath.Join(e.root, "to-pool", "volumes"), VolumeCapability: mcap})
			return err
		}, codes.InvalidArgument},
		"stage with bind flag": {func() error {
			_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: good.id, StagingTargetPath: staging, VolumeCapability: withFlags("bind")})
			return err
		}, codes.InvalidArgument},
		"stage with a non-numeric mount group": {func() error {
			bad := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{VolumeMountGroup: "wheel; rm"}}, AccessMode: mcap.AccessMode}
			_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: good.id, StagingTargetPath: staging, VolumeCapability: bad})
			return err
		}, codes.InvalidArgument},
		"stage unknown volume": {func() error {
			_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "pv-nope", StagingTargetPath: staging, VolumeCapability: mcap})
			return err
		}, codes.NotFound},
		"publish onto a symlink": {func() error {
			_, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: good.id, StagingTargetPath: staging, TargetPath: filepath.Join(e.root, "link-target"), VolumeCapability: mcap})
			return err
		}, codes.InvalidArgument},
		"publish before stage": {func() error {
			_, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: good.id, StagingTargetPath: staging, TargetPath: filepath.Join(e.root, "t"), VolumeCapability: mcap})
			return err
		}, codes.FailedPrecondition},
		"unpublish the canary": {func() error {
			_, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: good.id, TargetPath: filepath.Join(canary, "file")})
			return err
		}, codes.InvalidArgument},
		"unpublish via symlink": {func() error {
			_, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: good.id, TargetPath: filepath.Join(e.root, "to-canary", "file")})
			return err
		}, codes.InvalidArgument},
		"unstage the canary": {func() error {
			_, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: good.id, StagingTargetPath: filepath.Join(canary, "dir")})
			return err
		}, codes.InvalidArgument},
		// The volume is not published there: OK by the spec, and the file,
		// which plinth did not make, stays (the fingerprint checks it).
		"unpublish a file that is not a target": {func() error {
			_, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: good.id, TargetPath: filepath.Join(e.root, "user-file")})
			return err
		}, codes.OK},
		"relative target": {func() error {
			_, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: good.id, TargetPath: "canary/file"})
			return err
		}, codes.InvalidArgument},
		"bad list token": {func() error {
			_, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "../../"})
			return err
		}, codes.Aborted},
		"negative max entries": {func() error { _, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1}); return err }, codes.InvalidArgument},
	}
	tried := 0
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.code {
				t.Errorf("got %v, want %v", err, tc.code)
			}
			if status.Code(err) != codes.OK && status.Convert(err).Message() == "" {
				t.Error("error without a message")
			}
			tried++
		})
	}
	if got := fingerprint(t, watched...); got != want {
		t.Errorf("bad input changed the file system:\nbefore:\n%s\nafter:\n%s", want, got)
	}
	if got := mountsUnder(t, watched...); got != mounts {
		t.Errorf("mounts under the test's directories changed:\nbefore:\n%s\nafter:\n%s", mounts, got)
	}
	t.Logf("%d bad-input cases tried; canary, pools and mount table unchanged", tried)
}
