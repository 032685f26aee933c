package standalone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/test/testenv"
)

// loopDisk is an image file attached as a loop device: what stands in for
// a disk here (it appears under /sys/block like one).
type loopDisk struct {
	name, file string
	size       int64
}

func (d *loopDisk) id() string { return "file:" + d.file }

func losetup(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("losetup", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// device is the loop device the disk's file is attached to now ("": none).
func (d *loopDisk) device(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("losetup", "-j", d.file, "-O", "NAME", "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -j %s: %v: %s", d.file, err, out)
	}
	return strings.TrimSpace(strings.Split(string(out), "\n")[0])
}

func (d *loopDisk) attach(t *testing.T) string { return losetup(t, "-f", "--show", d.file) }

func (d *loopDisk) detach(t *testing.T) {
	t.Helper()
	if dev := d.device(t); dev != "" {
		losetup(t, "-d", dev)
	}
}

// sum is a checksum of the disk's whole content.
func (d *loopDisk) sum(t *testing.T) [32]byte {
	t.Helper()
	f, err := os.Open(d.file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func blkidType(t *testing.T, dev string) string {
	out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "TYPE", dev).CombinedOutput()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// diskEnv is plinth standalone with disk rules over loop "disks": a file
// pool on one, a btrfs raid1 pool over two, a disk pool of three, and a
// disk with someone else's filesystem that a rule names but may not wipe.
type diskEnv struct {
	*env
	dir   string
	disks map[string]*loopDisk
}

func newDiskEnv(t *testing.T) *diskEnv {
	testenv.RequireHost(t, "losetup", "wipefs", "xfs_io")
	root := t.TempDir()
	e := &diskEnv{env: &env{root: filepath.Join(root, "kubelet")}, dir: filepath.Join(root, "disks"), disks: map[string]*loopDisk{}}
	os.MkdirAll(e.root, 0o750)
	os.MkdirAll(e.dir, 0o700)
	for _, d := range []*loopDisk{
		{name: "fast", size: 512 << 20}, {name: "m1", size: 320 << 20}, {name: "m2", size: 320 << 20},
		{name: "w1", size: 64 << 20}, {name: "w2", size: 96 << 20}, {name: "w3", size: 64 << 20}, {name: "foreign", size: 64 << 20},
	} {
		d.file = filepath.Join(e.dir, d.name+".img")
		if err := os.WriteFile(d.file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(d.file, d.size); err != nil {
			t.Fatal(err)
		}
		e.disks[d.name] = d
	}
	// Someone else's data.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "theirs", e.disks["foreign"].file).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	for _, d := range e.disks {
		d.attach(t)
	}
	state := filepath.Join(root, "state")
	t.Cleanup(func() {
		// After plinth has stopped (cleanups run last first): what a
		// reboot does, then the disks go.
		testenv.Reboot(t, e.root, filepath.Join(state, "disks", "mnt", "fast"))
		testenv.Reboot(t, state)
		for _, d := range e.disks {
			d.detach(t)
		}
	})
	ids := func(names ...string) string {
		var q []string
		for _, n := range names {
			q = append(q, fmt.Sprintf("%q", e.disks[n].id()))
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	rules := fmt.Sprintf(`
scanInterval: 1s
rules:
- {pool: fast, layout: file, fsType: ext4, select: {transports: [loop], ids: %s}}
- {pool: mirror, layout: btrfs, raid: raid1, select: {transports: [loop], ids: %s}}
- {pool: whole, layout: disk, fsType: ext4, select: {transports: [loop], ids: %s}}
- {pool: keep, layout: disk, select: {transports: [loop], ids: %s}}
`, ids("fast"), ids("m1", "m2"), ids("w1", "w2", "w3"), ids("foreign"))
	e.cfg = app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(root, "csi.sock"), Root: state, NodeID: "node-1",
		DiskConfigData: []byte(rules), AllowedPaths: []string{e.root}, SysfsRoot: "/sys", DevRoot: "/dev",
	}}
	return e
}

func (e *diskEnv) state() string { return e.cfg.Root }

// volumeDisk reads which disk a disk pool's volume is, from its record.
func (e *diskEnv) volumeDisk(t *testing.T, id string) *loopDisk {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.state(), "disks", "pools", "whole", "volumes", id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct{ Disk string }
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	for _, d := range e.disks {
		if d.id() == rec.Disk {
			return d
		}
	}
	t.Fatalf("volume %s is on %q, not one of the test's disks", id, rec.Disk)
	return nil
}

func waitHealth(t *testing.T, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if f() {
			return
		}
	}
	t.Fatalf("%s: not within 15s", what)
}

// TestDiskRules: rules claim loop "disks" into a file pool, a btrfs raid1
// pool and a disk pool and never touch a foreign filesystem; volumes of
// each keep their data through a reboot in which every disk comes back
// under another name; a pulled disk, a failed pool filesystem and a
// degraded mirror are each reported while everything else keeps serving;
// a deleted whole-disk volume's disk is wiped before it is free again.
func TestDiskRules(t *testing.T) {
	e := newDiskEnv(t)
	ctx := context.Background()
	foreignSum := e.disks["foreign"].sum(t)

	// The dry run says what would happen and changes nothing.
	dry := e.cfg
	if err := dry.Validate(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := app.DisksDryRun(ctx, dry.CSIConfig, &out, "json"); err != nil {
		t.Fatal(err)
	}
	var plan disk.Plan
	if err := json.Unmarshal(out.Bytes(), &plan); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"fast": "claim fast", "m1": "claim mirror", "m2": "claim mirror", "w1": "claim whole", "w2": "claim whole",
		"w3": "claim whole", "foreign": "skip "}
	for _, dec := range plan.Decisions {
		for name, d := range e.disks {
			if dec.Disk.ID != d.id() {
				continue
			}
			if got := string(dec.Action) + " " + dec.Pool; got != want[name] {
				t.Errorf("dry run: disk %s: %q (%s), want %q", name, got, dec.Why, want[name])
			}
			if name == "foreign" && !strings.Contains(dec.Why, "ext4") {
				t.Errorf("dry run: the foreign disk is skipped because %q; want its ext4 named", dec.Why)
			}
			delete(want, name)
		}
	}
	if len(want) != 0 {
		t.Errorf("dry run did not list %v", want)
	}
	if _, err := os.Stat(filepath.Join(e.state(), "disks")); !os.IsNotExist(err) {
		t.Errorf("the dry run wrote %s (%v)", filepath.Join(e.state(), "disks"), err)
	}
	for _, n := range []string{"fast", "m1", "w1"} {
		if typ := blkidType(t, e.disks[n].device(t)); typ != "" {
			t.Errorf("after the dry run disk %s holds %s", n, typ)
		}
	}

	start := time.Now()
	sock, stop := testenv.StandaloneStoppable(t, e.cfg)
	t.Logf("first start: 7 disks read, a file and a btrfs raid1 pool made and mounted, 3 disks claimed whole, CSI served after %s", time.Since(start).Round(time.Millisecond))
	c := testenv.Dial(t, sock)
	capResp, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": "whole"}})
	if err != nil {
		t.Fatal(err)
	}
	if capResp.GetAvailableCapacity() != 224<<20 || capResp.GetMaximumVolumeSize().GetValue() != 96<<20 {
		t.Errorf("whole pool: capacity %d, maximum %d; want 224MiB (three free disks), 96MiB (the largest)",
			capResp.GetAvailableCapacity(), capResp.GetMaximumVolumeSize().GetValue())
	}
	vols := []*vol{
		{name: "on-fast", pool: "fast", cap: testenv.MountCap(""), size: 64 << 20},
		{name: "on-mirror", pool: "mirror", cap: testenv.MountCap(""), size: 64 << 20},
		{name: "whole-fs", pool: "whole", cap: testenv.MountCap(""), size: 80 << 20},
		{name: "whole-block", pool: "whole", cap: testenv.BlockCap(), size: 32 << 20},
	}
	payload := func(v *vol) []byte { return []byte("the data of " + v.name) }
	for _, v := range vols {
		create(t, c, v)
		writeData(t, v, e.stagePublish(t, c, v), payload(v))
	}
	// Best fit: 80MiB gets the 96MiB disk, 32MiB one of the 64MiB disks.
	if d := e.volumeDisk(t, vols[2].id); d.name != "w2" {
		t.Errorf("the 80MiB volume got disk %s, want w2 (96MiB)", d.name)
	}
	if r, err := c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: vols[2].id}); err != nil || r.GetVolume().GetCapacityBytes() != 96<<20 {
		t.Errorf("whole-disk volume: capacity %d (%v), want the disk's 96MiB", r.GetVolume().GetCapacityBytes(), err)
	}
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "too-big", CapacityRange: &csi.CapacityRange{RequiredBytes: 80 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{testenv.BlockCap()}, Parameters: map[string]string{"pool": "whole"}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("an 80MiB volume with only a 64MiB disk free: %v, want ResourceExhausted", err)
	}

	// plinth restarts while the node does not: its pools are mounted
	// already (a btrfs mount shows an anonymous device, not its disks') and
	// are taken as they are.
	stop()
	sock, stop = testenv.StandaloneStoppable(t, e.cfg)
	c = testenv.Dial(t, sock)
	if sh, err := c.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{}); err != nil || len(sh.GetBackendHealth()) != 0 {
		t.Fatalf("storage health after a restart: %v %v", sh, err)
	}
	for _, v := range vols {
		target := e.stagePublish(t, c, v) // already: answered OK
		if got := readData(t, v, target, len(payload(v))); !bytes.Equal(got, payload(v)) {
			t.Errorf("%s after a restart holds %q", v.name, got)
		}
	}

	// A reboot: every mount and loop device goes, and the disks come back
	// under other names.
	stop()
	testenv.Reboot(t, e.root, filepath.Join(e.state(), "disks", "mnt", "fast"))
	testenv.Reboot(t, e.state())
	before := map[string]string{}
	for n, d := range e.disks {
		before[n] = d.device(t)
		d.detach(t)
	}
	spacer := &loopDisk{name: "spacer", file: filepath.Join(e.dir, "spacer.img")}
	os.WriteFile(spacer.file, nil, 0o600)
	os.Truncate(spacer.file, 1<<20)
	spacer.attach(t)
	defer spacer.detach(t)
	renamed := 0
	for _, n := range []string{"foreign", "w3", "w2", "w1", "m2", "m1", "fast"} {
		if dev := e.disks[n].attach(t); dev != before[n] {
			renamed++
		}
	}
	if renamed == 0 {
		t.Fatal("no disk came back under another name; the reboot proves nothing")
	}
	start = time.Now()
	sock, stop = testenv.StandaloneStoppable(t, e.cfg)
	t.Logf("start after the reboot: pools found by identity and mounted, CSI served after %s", time.Since(start).Round(time.Millisecond))
	c = testenv.Dial(t, sock)
	for _, v := range vols {
		target := e.stagePublish(t, c, v)
		if got := readData(t, v, target, len(payload(v))); !bytes.Equal(got, payload(v)) {
			t.Errorf("%s after the reboot (%d disks renamed) holds %q", v.name, renamed, got)
		}
	}
	t.Logf("reboot: %d of 7 disks came back under another name; every volume staged again with its data", renamed)

	// A disk pulled: the unused block volume's disk goes.
	wb := vols[3]
	e.unpublishUnstage(t, c, wb)
	pulled := e.volumeDisk(t, wb.id)
	pulled.detach(t)
	waitHealth(t, "the volume of a pulled disk reported", func() bool {
		r, err := c.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: wb.id})
		return err == nil && len(r.GetVolumeHealth().GetHealthStatuses()) > 0 &&
			strings.Contains(r.GetVolumeHealth().GetHealthStatuses()[0].GetMessage(), "not present")
	})
	if r, err := c.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: wb.id}); err != nil || len(r.GetVolumeHealth().GetHealthStatuses()) == 0 {
		t.Errorf("ControllerGetVolumeHealth of the pulled disk's volume: %v %v, want it abnormal", r, err)
	}
	if r, err := c.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: vols[2].id}); err != nil || len(r.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Errorf("the other whole-disk volume's health: %v %v, want normal", r, err)
	}
	if got := readData(t, vols[2], filepath.Join(e.root, vols[2].name+"-target"), len(payload(vols[2]))); !bytes.Equal(got, payload(vols[2])) {
		t.Errorf("the other whole-disk volume holds %q while a disk is pulled", got)
	}
	if _, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: wb.id, StagingTargetPath: filepath.Join(e.root, wb.name+"-staging"),
		VolumeCapability: wb.cap}); err == nil {
		t.Error("staging the pulled disk's volume succeeded")
	}
	pulled.attach(t)
	waitHealth(t, "the disk's return seen", func() bool {
		r, err := c.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: wb.id})
		return err == nil && len(r.GetVolumeHealth().GetHealthStatuses()) == 0
	})

	// The file pool's filesystem fails: that pool is unhealthy and takes
	// no volume; the others go on.
	fastMnt := filepath.Join(e.state(), "disks", "mnt", "fast")
	e.unpublishUnstage(t, c, vols[0])
	if out, err := exec.Command("xfs_io", "-x", "-c", "shutdown", fastMnt).CombinedOutput(); err != nil {
		t.Fatalf("xfs_io shutdown: %v: %s", err, out)
	}
	sh, err := c.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || !strings.Contains(fmt.Sprint(sh.GetBackendHealth()), "pool fast") {
		t.Errorf("storage health after the fast pool's filesystem failed: %v %v", sh, err)
	}
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "on-failed", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{testenv.MountCap("")}, Parameters: map[string]string{"pool": "fast"}})
	if err == nil {
		t.Error("a volume was made on a pool whose filesystem failed")
	}
	extra := &vol{name: "still-serving", pool: "mirror", cap: testenv.MountCap(""), size: 16 << 20}
	create(t, c, extra)

	// The whole-disk volume is deleted: its disk is wiped, then free.
	wf := vols[2]
	wfDisk := e.volumeDisk(t, wf.id)
	e.unpublishUnstage(t, c, wf)
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: wf.id}); err != nil {
		t.Fatal(err)
	}
	if typ := blkidType(t, wfDisk.device(t)); typ != "" {
		t.Errorf("the deleted volume's disk still holds %s", typ)
	}
	again := &vol{name: "next-tenant", pool: "whole", cap: testenv.BlockCap(), size: 90 << 20}
	create(t, c, again)
	if d := e.volumeDisk(t, again.id); d != wfDisk {
		t.Errorf("the next 90MiB volume got %s, want the freed %s", d.name, wfDisk.name)
	}

	// The mirror loses a disk across a restart: it runs degraded, its data
	// readable.
	stop()
	testenv.Reboot(t, e.root, fastMnt)
	testenv.Reboot(t, e.state())
	e.disks["m2"].detach(t)
	sock, stop = testenv.StandaloneStoppable(t, e.cfg)
	c = testenv.Dial(t, sock)
	vm := vols[1]
	if got := readData(t, vm, e.stagePublish(t, c, vm), len(payload(vm))); !bytes.Equal(got, payload(vm)) {
		t.Errorf("the degraded mirror's volume holds %q", got)
	}
	sh, err = c.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || !strings.Contains(fmt.Sprint(sh.GetBackendHealth()), "PoolDegraded") {
		t.Errorf("storage health with a mirror disk missing: %v %v, want PoolDegraded", sh, err)
	}
	e.unpublishUnstage(t, c, vm)
	stop()
	e.disks["m2"].attach(t)

	if e.disks["foreign"].sum(t) != foreignSum {
		t.Error("the foreign disk's content changed")
	}
	if typ := blkidType(t, e.disks["foreign"].device(t)); typ != "ext4" {
		t.Errorf("the foreign disk holds %q, want its ext4", typ)
	}
}
