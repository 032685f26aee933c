// Package standalone tests plinth standalone end to end over its CSI socket
// on real loop devices and mounts: restart and reboot recovery, online and
// offline expansion, and bad input that must change nothing.
package standalone

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/test/testenv"
)

type env struct {
	root     string // staging and target paths live here
	cfg      app.StandaloneConfig
	poolDirs []string
}

// newEnv lays out three pools: file pools with ext4 and xfs volumes on a
// reflink xfs, and a btrfs pool on btrfs.
func newEnv(t *testing.T) *env {
	testenv.RequireHost(t)
	xfs := testenv.Filesystem(t, "xfs", 4<<30)
	bt := testenv.Filesystem(t, "btrfs", 2<<30)
	root := t.TempDir()
	e := &env{root: filepath.Join(root, "kubelet"), poolDirs: []string{filepath.Join(xfs, "ext4"), filepath.Join(xfs, "xfs"), filepath.Join(bt, "bt")}}
	os.MkdirAll(e.root, 0o750)
	for _, d := range e.poolDirs {
		os.MkdirAll(d, 0o700) // plinth refuses a missing pool directory
	}
	e.cfg = app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(root, "csi.sock"),
		Root:     filepath.Join(root, "state"),
		Pools: []app.PoolSpec{
			{Name: "fext4", Backend: "file", Dir: e.poolDirs[0], FsType: "ext4"},
			{Name: "fxfs", Backend: "file", Dir: e.poolDirs[1], FsType: "xfs"},
			{Name: "bt", Backend: "btrfs", Dir: e.poolDirs[2]},
		},
		AllowedPaths: []string{e.root},
	}}
	return e
}

type vol struct {
	name, pool string
	cap        *csi.VolumeCapability
	size       int64
	id         string
	source     string // snapshot it was restored from
}

func (e *env) paths(v *vol) (staging, target string) {
	return filepath.Join(e.root, v.name+"-staging"), filepath.Join(e.root, v.name+"-target")
}

func create(t *testing.T, c *testenv.Client, v *vol) {
	t.Helper()
	resp, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: v.name, CapacityRange: &csi.CapacityRange{RequiredBytes: v.size},
		VolumeCapabilities: []*csi.VolumeCapability{v.cap}, Parameters: map[string]string{"pool": v.pool},
	})
	if err != nil {
		t.Fatalf("create %s: %v", v.name, err)
	}
	v.id = resp.GetVolume().GetVolumeId()
}

func (e *env) stagePublish(t *testing.T, c *testenv.Client, v *vol) string {
	t.Helper()
	ctx := context.Background()
	staging, target := e.paths(v)
	if _, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: v.cap}); err != nil {
		t.Fatalf("stage %s: %v", v.name, err)
	}
	if _, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: v.cap}); err != nil {
		t.Fatalf("publish %s: %v", v.name, err)
	}
	return target
}

func (e *env) unpublishUnstage(t *testing.T, c *testenv.Client, v *vol) {
	t.Helper()
	ctx := context.Background()
	staging, target := e.paths(v)
	if _, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target}); err != nil {
		t.Fatalf("unpublish %s: %v", v.name, err)
	}
	if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("unstage %s: %v", v.name, err)
	}
}

// writeData stores payload in the volume published at target: a file for
// filesystems, the first bytes of the device for block volumes.
func writeData(t *testing.T, v *vol, target string, payload []byte) {
	t.Helper()
	path := target
	flags := os.O_WRONLY
	if v.cap.GetBlock() == nil {
		path, flags = filepath.Join(target, "data"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil { // what the workload acknowledged
		t.Fatal(err)
	}
	f.Close()
}

func readData(t *testing.T, v *vol, target string, n int) []byte {
	t.Helper()
	path := target
	if v.cap.GetBlock() == nil {
		path = filepath.Join(target, "data")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func allVolumes() []*vol {
	return []*vol{
		{name: "ext4-vol", pool: "fext4", cap: testenv.MountCap(""), size: 64 << 20},
		{name: "xfs-vol", pool: "fxfs", cap: testenv.MountCap("xfs"), size: 320 << 20},
		{name: "block-vol", pool: "fext4", cap: testenv.BlockCap(), size: 32 << 20},
		{name: "btrfs-vol", pool: "bt", cap: testenv.MountCap(""), size: 64 << 20},
	}
}

// TestRebootKeepsEveryVolume: volumes of every kind hold data; plinth stops;
// everything it mounted is unmounted and its loop devices detached behind
// its back; a new plinth rebuilds its view from disk and every volume
// stages and publishes again with its data.
func TestRebootKeepsEveryVolume(t *testing.T) {
	e := newEnv(t)
	sock, stop := testenv.StandaloneStoppable(t, e.cfg)
	c := testenv.Dial(t, sock)
	vols := allVolumes()
	for i, v := range vols {
		create(t, c, v)
		writeData(t, v, e.stagePublish(t, c, v), []byte("payload of volume "+string(rune('a'+i))))
	}
	before, err := c.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	capBefore := capacities(t, c)

	stop()
	testenv.Reboot(t, e.root, e.poolDirs...)

	sock, _ = testenv.StandaloneStoppable(t, e.cfg)
	c = testenv.Dial(t, sock)
	after, err := c.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.GetEntries()) != len(before.GetEntries()) {
		t.Fatalf("after reboot %d volumes, before %d", len(after.GetEntries()), len(before.GetEntries()))
	}
	// GetCapacity is rebuilt from disk too (within 1 MiB per pool of
	// filesystem metadata churn from the unmounts).
	for pool, b := range capBefore {
		if a := capacities(t, c)[pool]; a < b-1<<20 || a > b+1<<20 {
			t.Errorf("pool %s capacity %d after reboot, %d before", pool, a, b)
		}
	}
	for i, v := range vols {
		target := e.stagePublish(t, c, v)
		want := []byte("payload of volume " + string(rune('a'+i)))
		if got := readData(t, v, target, len(want)); !bytes.Equal(got, want) {
			t.Errorf("%s after reboot holds %q, want %q", v.name, got, want)
		}
		e.unpublishUnstage(t, c, v)
		if _, err := c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
			t.Fatalf("delete %s: %v", v.name, err)
		}
	}
	for _, d := range e.poolDirs {
		for _, sub := range []string{"volumes", "snapshots"} {
			if entries, _ := os.ReadDir(filepath.Join(d, sub)); len(entries) != 0 {
				t.Errorf("%s/%s not empty after deleting everything: %v", d, sub, entries)
			}
		}
	}
}

func statfsSize(t *testing.T, path string) int64 {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		t.Fatal(err)
	}
	return int64(fs.Blocks) * fs.Bsize
}

// TestExpand grows each kind of volume while published: xfs grows online;
// ext4, where the kernel refuses online growth, grows at the next stage;
// a block device and a btrfs subvolume's limit grow at once.
func TestExpand(t *testing.T) {
	e := newEnv(t)
	c := testenv.Dial(t, testenv.Standalone(t, e.cfg))
	ctx := context.Background()
	for _, v := range allVolumes() {
		t.Run(v.name, func(t *testing.T) {
			create(t, c, v)
			target := e.stagePublish(t, c, v)
			writeData(t, v, target, []byte("kept across growth"))
			newSize := 2 * v.size
			ce, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.id, CapacityRange: &csi.CapacityRange{RequiredBytes: newSize}})
			if err != nil || ce.GetCapacityBytes() != newSize {
				t.Fatalf("controller expand: %v %v", ce, err)
			}
			if ce.GetNodeExpansionRequired() {
				if _, err := c.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: target, CapacityRange: &csi.CapacityRange{RequiredBytes: newSize}}); err != nil {
					t.Fatalf("node expand: %v", err)
				}
			}
			stats, err := c.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: target})
			if err != nil {
				t.Fatal(err)
			}
			total := stats.GetUsage()[0].GetTotal()
			grownOnline := total > v.size*3/2
			switch v.name {
			case "ext4-vol":
				if grownOnline {
					t.Log("ext4 grew online: this kernel allows it")
				} else {
					// The next stage grows it offline.
					e.unpublishUnstage(t, c, v)
					target = e.stagePublish(t, c, v)
					if total = statfsSize(t, target); total <= v.size*3/2 {
						t.Fatalf("ext4 after restage is %d bytes, want ~%d", total, newSize)
					}
				}
			default:
				if !grownOnline {
					t.Fatalf("%s sees %d bytes after growing to %d", v.name, total, newSize)
				}
			}
			if got := readData(t, v, target, 18); string(got) != "kept across growth" {
				t.Errorf("data after growth: %q", got)
			}
			e.unpublishUnstage(t, c, v)
			if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// capacities is GetCapacity per pool.
func capacities(t *testing.T, c *testenv.Client) map[string]int64 {
	out := map[string]int64{}
	for _, p := range []string{"fext4", "fxfs", "bt"} {
		r, err := c.GetCapacity(context.Background(), &csi.GetCapacityRequest{Parameters: map[string]string{"pool": p}})
		if err != nil {
			t.Fatal(err)
		}
		out[p] = r.GetAvailableCapacity()
	}
	return out
}
