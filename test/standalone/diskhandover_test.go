package standalone

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/test/testenv"
)

// A disk pool's disks as an outsider finds them between two scans (the
// scan interval is an hour here, so plinth's view is as stale as it can
// be): formatted by someone, held open by a program, formatted again
// after plinth handed the disk over. plinth hands out, mounts and wipes
// only what it can see right then is empty or the volume's own.

type handoverEnv struct {
	root  string // kubelet-ish root for staging paths
	disks map[string]*loopDisk
	c     *testenv.Client
	cfg   app.StandaloneConfig
	stop  func()
}

func newHandoverEnv(t *testing.T, names ...string) *handoverEnv {
	t.Helper()
	testenv.RequireHost(t, "losetup", "wipefs", "mkfs.ext4")
	dir := t.TempDir()
	e := &handoverEnv{root: filepath.Join(dir, "kubelet"), disks: map[string]*loopDisk{}}
	os.MkdirAll(e.root, 0o750)
	var ids []string
	for _, n := range names {
		d := &loopDisk{name: n, file: filepath.Join(dir, n+".img"), size: 64 << 20}
		if err := os.WriteFile(d.file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(d.file, d.size); err != nil {
			t.Fatal(err)
		}
		d.attach(t)
		e.disks[n] = d
		ids = append(ids, fmt.Sprintf("%q", d.id()))
	}
	state := filepath.Join(dir, "state")
	t.Cleanup(func() {
		testenv.Reboot(t, e.root)
		testenv.Reboot(t, state)
		for _, d := range e.disks {
			d.detach(t)
		}
	})
	rules := fmt.Sprintf("scanInterval: 1h\nrules:\n- {pool: whole, layout: disk, fsType: ext4, select: {transports: [loop], ids: [%s]}}\n", strings.Join(ids, ", "))
	cfg := app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(dir, "csi.sock"), Root: state, NodeID: "node-1",
		DiskConfigData: []byte(rules), AllowedPaths: []string{e.root}, SysfsRoot: "/sys", DevRoot: "/dev",
	}}
	e.cfg = cfg
	var sock string
	sock, e.stop = testenv.StandaloneStoppable(t, cfg)
	e.c = testenv.Dial(t, sock)
	return e
}

// restart stops plinth and starts it again on the same root.
func (e *handoverEnv) restart(t *testing.T) {
	t.Helper()
	e.stop()
	var sock string
	sock, e.stop = testenv.StandaloneStoppable(t, e.cfg)
	e.c = testenv.Dial(t, sock)
}

// outsiderFormats makes an ext4 with a file on it, as an administrator
// would on a disk they took for unused.
func outsiderFormats(t *testing.T, dev string) {
	t.Helper()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "theirs", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	err := os.WriteFile(filepath.Join(mnt, "precious.txt"), []byte("not the tenant's"), 0o600)
	unix.Unmount(mnt, 0)
	if err != nil {
		t.Fatal(err)
	}
}

func (e *handoverEnv) create(t *testing.T, name string, block bool) (*csi.CreateVolumeResponse, error) {
	cap := testenv.MountCap("ext4")
	if block {
		cap = testenv.BlockCap()
	}
	return e.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{cap}})
}

func (e *handoverEnv) stage(id string, block bool) error {
	cap := testenv.MountCap("ext4")
	if block {
		cap = testenv.BlockCap()
	}
	_, err := e.c.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id,
		StagingTargetPath: filepath.Join(e.root, "stage-"+id), VolumeCapability: cap})
	return err
}

func (e *handoverEnv) unstage(t *testing.T, id string) {
	t.Helper()
	if _, err := e.c.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id,
		StagingTargetPath: filepath.Join(e.root, "stage-"+id)}); err != nil {
		t.Fatal(err)
	}
}

// Trial findings 2 and 3: a claimed free disk that someone formats, and
// one a program holds open exclusively, are not handed out while plinth's
// last scan still calls them free.
func TestWholeDiskHandedOutOnlyIfEmptyNow(t *testing.T) {
	e := newHandoverEnv(t, "a", "b")
	outsiderFormats(t, e.disks["a"].device(t))
	sumA := e.disks["a"].sum(t)
	fd, err := unix.Open(e.disks["b"].device(t), unix.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.create(t, "v1", true)
	wantCode(t, "create with one disk formatted and one held", err, codes.ResourceExhausted)
	unix.Close(fd)
	v, err := e.create(t, "v1", true)
	if err != nil {
		t.Fatalf("create once the hold is gone: %v", err)
	}
	if err := e.stage(v.Volume.VolumeId, true); err != nil {
		t.Fatalf("stage: %v", err)
	}
	// The tenant writes at both ends of its disk; the delete discards it
	// all (a loop device punches holes in its file), so the next tenant
	// reads zeros.
	b := e.disks["b"]
	f, err := os.OpenFile(b.device(t), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("the tenant's secret")
	for _, off := range []int64{1 << 20, b.size - 4096} {
		if _, err := f.WriteAt(secret, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	e.unstage(t, v.Volume.VolumeId)
	if _, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.Volume.VolumeId}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	data, err := os.ReadFile(b.file)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, secret) {
		t.Error("the deleted block volume's data is still on its disk")
	}
	if e.disks["a"].sum(t) != sumA {
		t.Error("the formatted disk changed")
	}
}

// A disk formatted by someone after it was handed to a volume, before the
// volume's first stage: the stage does not mount it (the tenant would see
// someone else's files) and the delete does not wipe it.
func TestWholeDiskFormattedBeforeFirstStage(t *testing.T) {
	for _, block := range []bool{false, true} {
		t.Run(fmt.Sprintf("block=%v", block), func(t *testing.T) {
			e := newHandoverEnv(t, "a")
			v, err := e.create(t, "v1", block)
			if err != nil {
				t.Fatal(err)
			}
			outsiderFormats(t, e.disks["a"].device(t))
			sum := e.disks["a"].sum(t)
			wantCode(t, "stage of a disk someone formatted", e.stage(v.Volume.VolumeId, block), codes.FailedPrecondition)
			_, err = e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.Volume.VolumeId})
			wantCode(t, "delete of a volume whose disk someone formatted", err, codes.FailedPrecondition)
			if e.disks["a"].sum(t) != sum {
				t.Error("the outsider's filesystem changed")
			}
			if err == nil || !strings.Contains(err.Error(), "wipefs --all") {
				t.Errorf("the refusal %v does not say how to go on", err)
			}
			// The administrator erases it: the delete goes through.
			if out, err := exec.Command("wipefs", "--all", "--quiet", e.disks["a"].device(t)).CombinedOutput(); err != nil {
				t.Fatalf("wipefs: %v: %s", err, out)
			}
			if _, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.Volume.VolumeId}); err != nil {
				t.Errorf("delete after the administrator erased the disk: %v", err)
			}
		})
	}
}

// A filesystem volume's disk reformatted by someone between two stages:
// the second stage mounts nothing, the delete wipes nothing. The
// volume's own filesystem is wiped by its delete.
func TestWholeDiskReformattedBetweenStages(t *testing.T) {
	e := newHandoverEnv(t, "a", "b")
	v, err := e.create(t, "v1", false)
	if err != nil {
		t.Fatal(err)
	}
	id := v.Volume.VolumeId
	if err := e.stage(id, false); err != nil {
		t.Fatalf("first stage: %v", err)
	}
	e.unstage(t, id)
	if err := e.stage(id, false); err != nil {
		t.Fatalf("stage of the volume's own filesystem: %v", err)
	}
	e.unstage(t, id)
	var d *loopDisk
	for _, x := range e.disks {
		if blkidType(t, x.device(t)) == "ext4" {
			d = x
		}
	}
	if d == nil {
		t.Fatal("no disk holds the volume's ext4")
	}
	outsiderFormats(t, d.device(t))
	sum := d.sum(t)
	wantCode(t, "stage of a reformatted disk", e.stage(id, false), codes.FailedPrecondition)
	_, err = e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, "delete of a reformatted disk's volume", err, codes.FailedPrecondition)
	if d.sum(t) != sum {
		t.Error("the outsider's filesystem changed")
	}

	// A volume's own filesystem goes with it.
	w, err := e.create(t, "v2", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.stage(w.Volume.VolumeId, false); err != nil {
		t.Fatal(err)
	}
	e.unstage(t, w.Volume.VolumeId)
	if _, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: w.Volume.VolumeId}); err != nil {
		t.Fatalf("delete of a volume with its own filesystem: %v", err)
	}
	for name, x := range e.disks {
		if x != d && blkidType(t, x.device(t)) != "" {
			t.Errorf("disk %s still holds %s after its volume's delete", name, blkidType(t, x.device(t)))
		}
	}
}

// Trial finding F1: a whole disk's raw block volume, staged or published,
// leaves no mount or loop device of the disk: its delete must still be
// refused, or the disk goes to the next tenant while the first still
// writes to it.
func TestWholeDiskBlockVolumeInUseIsNotDeleted(t *testing.T) {
	e := newHandoverEnv(t, "a", "b")
	ctx := context.Background()
	v, err := e.create(t, "v1", true)
	if err != nil {
		t.Fatal(err)
	}
	id := v.Volume.VolumeId
	if err := e.stage(id, true); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, "delete of a staged whole-disk block volume", err, codes.FailedPrecondition)
	target := filepath.Join(e.root, "target-"+id)
	if _, err := e.c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(e.root, "stage-"+id),
		TargetPath: target, VolumeCapability: testenv.BlockCap()}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, "delete of a published whole-disk block volume", err, codes.FailedPrecondition)
	if _, err := e.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, "delete of a staged (no longer published) whole-disk block volume", err, codes.FailedPrecondition)
	e.unstage(t, id)
	if _, err := e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("delete after unstage: %v", err)
	}
}

// Trial finding F4: a disk whose previous owner only erased the
// signatures (wipefs) is free; its first raw block tenant must not read
// what is behind them.
func TestWholeDiskFirstTenantReadsNoPreviousData(t *testing.T) {
	e := newHandoverEnv(t, "a")
	dev := e.disks["a"].device(t)
	outsiderFormats(t, dev)
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", name, err, out)
		}
	}
	run("wipefs", "--all", "--quiet", dev)
	v, err := e.create(t, "v1", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.stage(v.Volume.VolumeId, true); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(e.disks["a"].file)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte("not the tenant's")) {
		t.Error("the first tenant's disk still holds the previous owner's file")
	}
}

// Trial finding F3: a filesystem volume's disk emptied behind plinth's back
// is not silently given a new, empty filesystem.
func TestWholeDiskEmptiedFilesystemVolumeIsNotReformatted(t *testing.T) {
	e := newHandoverEnv(t, "a")
	v, err := e.create(t, "v1", false)
	if err != nil {
		t.Fatal(err)
	}
	id := v.Volume.VolumeId
	if err := e.stage(id, false); err != nil {
		t.Fatal(err)
	}
	e.unstage(t, id)
	dev := e.disks["a"].device(t)
	if out, err := exec.Command("wipefs", "--all", "--quiet", dev).CombinedOutput(); err != nil {
		t.Fatalf("wipefs: %v: %s", err, out)
	}
	err = e.stage(id, false)
	wantCode(t, "stage of a volume whose filesystem is gone", err, codes.FailedPrecondition)
	if err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("the refusal %v does not say the filesystem is gone", err)
	}
	if typ := blkidType(t, dev); typ != "" {
		t.Errorf("plinth made a new %s on the emptied disk", typ)
	}
	if _, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("delete of the emptied volume: %v", err)
	}
}

// Trial finding F8: a disk set read-only is not handed out.
func TestWholeDiskReadOnlyIsNotHandedOut(t *testing.T) {
	e := newHandoverEnv(t, "a")
	dev := e.disks["a"].device(t)
	if out, err := exec.Command("blockdev", "--setro", dev).CombinedOutput(); err != nil {
		t.Fatalf("blockdev: %v: %s", err, out)
	}
	defer exec.Command("blockdev", "--setrw", dev).Run()
	_, err := e.create(t, "v1", true)
	wantCode(t, "create with the only disk read-only", err, codes.ResourceExhausted)
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("the refusal %v does not say read-only", err)
	}
}

// Trial finding F2: two disks trade identities (two disks with one serial;
// here the images are renamed while detached): a volume is never staged
// on, or wiped off, the disk that carries another volume's filesystem.
func TestWholeDiskCarryingAnotherVolumesFilesystem(t *testing.T) {
	e := newHandoverEnv(t, "a", "b")
	fsv, err := e.create(t, "fs", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.stage(fsv.Volume.VolumeId, false); err != nil {
		t.Fatal(err)
	}
	e.unstage(t, fsv.Volume.VolumeId)
	bv, err := e.create(t, "blk", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.stage(bv.Volume.VolumeId, true); err != nil {
		t.Fatal(err)
	}
	e.stop()
	a, b := e.disks["a"], e.disks["b"]
	a.detach(t)
	b.detach(t)
	tmp := a.file + ".swap"
	for _, mv := range [][2]string{{a.file, tmp}, {b.file, a.file}, {tmp, b.file}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	a.attach(t)
	b.attach(t)
	e.restart(t)
	// Staged before the swap: a new pod's publish must not get the disk
	// that now carries the other volume's filesystem.
	_, err = e.c.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: bv.Volume.VolumeId,
		StagingTargetPath: filepath.Join(e.root, "stage-"+bv.Volume.VolumeId), TargetPath: filepath.Join(e.root, "target-blk"),
		VolumeCapability: testenv.BlockCap()})
	wantCode(t, "publish of the block volume on the disk with the other volume's filesystem", err, codes.FailedPrecondition)
	e.unstage(t, bv.Volume.VolumeId)
	err = e.stage(bv.Volume.VolumeId, true)
	wantCode(t, "stage of the block volume on the disk with the other volume's filesystem", err, codes.FailedPrecondition)
	_, err = e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: bv.Volume.VolumeId})
	wantCode(t, "delete of the block volume on the disk with the other volume's filesystem", err, codes.FailedPrecondition)
}

// A re-trial finding: a volume of a file pool made on a disk whose disk is
// missing at start is not "gone": its delete must not succeed, or the
// volume comes back with its data, orphaned, when the disk does.
func TestDeleteWhilePoolDiskMissingIsRefused(t *testing.T) {
	testenv.RequireHost(t, "losetup", "wipefs")
	dir := t.TempDir()
	d := &loopDisk{name: "f", file: filepath.Join(dir, "f.img"), size: 320 << 20}
	if err := os.WriteFile(d.file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(d.file, d.size); err != nil {
		t.Fatal(err)
	}
	d.attach(t)
	state, kubelet := filepath.Join(dir, "state"), filepath.Join(dir, "kubelet")
	os.MkdirAll(kubelet, 0o750)
	t.Cleanup(func() {
		testenv.Reboot(t, kubelet)
		testenv.Reboot(t, state, filepath.Join(state, "disks", "mnt", "fp"))
		d.detach(t)
	})
	rules := fmt.Sprintf("rules:\n- {pool: fp, layout: file, select: {transports: [loop], ids: [%q]}}\n", d.id())
	cfg := app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(dir, "csi.sock"), Root: state, NodeID: "node-1",
		DiskConfigData: []byte(rules), AllowedPaths: []string{kubelet}, SysfsRoot: "/sys", DevRoot: "/dev",
	}}
	sock, stop := testenv.StandaloneStoppable(t, cfg)
	c := testenv.Dial(t, sock)
	v, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{testenv.MountCap("ext4")}})
	if err != nil {
		t.Fatal(err)
	}
	stop()
	testenv.Reboot(t, state, filepath.Join(state, "disks", "mnt", "fp"))
	d.detach(t)
	sock, stop = testenv.StandaloneStoppable(t, cfg)
	c = testenv.Dial(t, sock)
	if _, err := c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.Volume.VolumeId}); err == nil {
		t.Error("the delete of a volume on a pool whose disk is missing succeeded")
	}
	stop()
	d.attach(t)
	sock, _ = testenv.StandaloneStoppable(t, cfg)
	c = testenv.Dial(t, sock)
	if _, err := c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.Volume.VolumeId}); err != nil {
		t.Errorf("the delete once the disk is back: %v", err)
	}
}

// A re-trial finding: a tenant copies a sibling filesystem volume's disk
// into its own block volume (a backup, a dd). The copy is the tenant's
// data: its volume stages and deletes as before, and the sibling's disk is
// untouched.
func TestWholeDiskCopyOfSiblingFilesystemIsTheCopiersData(t *testing.T) {
	e := newHandoverEnv(t, "a", "b")
	fsv, err := e.create(t, "fs", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.stage(fsv.Volume.VolumeId, false); err != nil {
		t.Fatal(err)
	}
	e.unstage(t, fsv.Volume.VolumeId)
	bv, err := e.create(t, "blk", true)
	if err != nil {
		t.Fatal(err)
	}
	id := bv.Volume.VolumeId
	if err := e.stage(id, true); err != nil {
		t.Fatal(err)
	}
	var src, dst *loopDisk
	for _, d := range e.disks {
		if blkidType(t, d.device(t)) == "ext4" {
			src = d
		} else {
			dst = d
		}
	}
	if src == nil || dst == nil {
		t.Fatal("no disk holds the filesystem volume")
	}
	if out, err := exec.Command("dd", "if="+src.device(t), "of="+dst.device(t), "bs=1M", "oflag=direct").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v: %s", err, out)
	}
	srcSum := src.sum(t)
	e.unstage(t, id)
	if err := e.stage(id, true); err != nil {
		t.Errorf("stage of the block volume holding a copy: %v", err)
	} else {
		e.unstage(t, id)
	}
	if _, err := e.c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("delete of the block volume holding a copy: %v", err)
	}
	if src.sum(t) != srcSum {
		t.Error("the sibling's disk changed")
	}
}
