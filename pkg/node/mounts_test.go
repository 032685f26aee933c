package node

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/fsimage"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
)

// filePool skips t unless real loop devices, mkfs.ext4 and blkid are at
// hand, and returns a temp dir with a file pool "p" in it.
func filePool(t *testing.T) (string, *file.Pool, *Local) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("needs loop devices")
	}
	for _, p := range []string{"mkfs.ext4", "blkid"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
	dir := t.TempDir()
	pl, err := file.New(file.Config{Name: "p", Dir: filepath.Join(dir, "pool"), Loops: mount.NewLoop("/sys", "/dev")})
	if err != nil {
		t.Fatal(err)
	}
	local, err := NewLocal(pl)
	if err != nil {
		t.Fatal(err)
	}
	return dir, pl, local
}

// A new filesystem volume is formatted at its first stage without a
// probe; its record says it is blank no more before mkfs runs, and every
// later stage probes once and formats nothing over what is there. A
// record cleared with no mkfs after it (a crash between the two) leads to
// a probe, then a format. Mount flags mount(2) cannot take are refused
// before anything is attached.
func TestBlankVolumeFormattedOnceWithoutProbe(t *testing.T) {
	dir, pl, local := filePool(t)
	run := mount.Exec{Launches: &mount.Launches{}}
	p := NewMounts(local, mount.NewHost(run), filepath.Join(dir, "state"))
	ctx := context.Background()
	a := Access{FsType: "ext4"}
	launched := func() map[string]uint64 { return run.Launches.Counts() }
	since := func(before map[string]uint64) map[string]uint64 {
		out := map[string]uint64{}
		for k, v := range launched() {
			if d := v - before[k]; d > 0 {
				out[k] = d
			}
		}
		return out
	}
	stage := func(id string) map[string]uint64 {
		t.Helper()
		before := launched()
		staging := filepath.Join(dir, id+"-staging")
		if err := p.Stage(ctx, id, staging, a); err != nil {
			t.Fatalf("stage %s: %v", id, err)
		}
		t.Cleanup(func() { _ = p.Unstage(ctx, id, staging) })
		return since(before)
	}
	unstage := func(id string) {
		t.Helper()
		if err := p.Unstage(ctx, id, filepath.Join(dir, id+"-staging")); err != nil {
			t.Fatalf("unstage %s: %v", id, err)
		}
	}
	blank := func(id string) bool {
		t.Helper()
		v, err := pl.GetVolume(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return v.Blank
	}
	for _, id := range []string{"pv-a", "pv-b", "pv-c"} {
		if _, err := local.CreateVolume(ctx, "p", pool.Volume{ID: id, Name: id, CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "ext4"}); err != nil {
			t.Fatal(err)
		}
		if !blank(id) {
			t.Fatalf("new volume %s is not recorded blank", id)
		}
	}

	if got := stage("pv-a"); got["blkid"] != 0 || got["mkfs.ext4"] != 1 {
		t.Errorf("first stage of a blank volume launched %v, want mkfs.ext4 once and no blkid", got)
	}
	if blank("pv-a") {
		t.Error("a formatted volume is still recorded blank")
	}
	staging := filepath.Join(dir, "pv-a-staging")
	if err := os.WriteFile(filepath.Join(staging, "data"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(staging, &st); err != nil || st.Type != unix.EXT4_SUPER_MAGIC {
		t.Fatalf("staging mount is not ext4: %x %v", st.Type, err)
	}
	unstage("pv-a")
	if got := stage("pv-a"); got["blkid"] != 1 || got["mkfs.ext4"] != 0 {
		t.Errorf("second stage launched %v, want one blkid and no mkfs", got)
	}
	if b, err := os.ReadFile(filepath.Join(staging, "data")); err != nil || string(b) != "kept" {
		t.Errorf("data after a second stage: %q %v", b, err)
	}

	// A crash after the record was cleared, before mkfs: probed, then
	// formatted.
	if err := pl.MarkFormatted(ctx, "pv-b"); err != nil {
		t.Fatal(err)
	}
	if got := stage("pv-b"); got["blkid"] != 1 || got["mkfs.ext4"] != 1 {
		t.Errorf("stage after a cleared record launched %v, want one blkid and one mkfs", got)
	}

	// Options mount(2) cannot take are refused before anything is done.
	bad := Access{FsType: "ext4", MountFlags: []string{"noauto"}}
	if err := p.Stage(ctx, "pv-c", filepath.Join(dir, "pv-c-staging"), bad); !errors.Is(err, pool.ErrInvalid) {
		t.Errorf("stage with noauto: %v, want ErrInvalid", err)
	}
	if _, attached, err := pl.Attached(ctx, "pv-c"); err != nil || attached {
		t.Errorf("a refused stage attached the volume (%v)", err)
	}
	if !blank("pv-c") {
		t.Error("a refused stage cleared the blank record")
	}
}

// TestRecordsOfEarlierBootDropped: stage and publish records (written
// without fsync) of an earlier boot are gone once NewMounts has run;
// those of the running boot stay.
func TestRecordsOfEarlierBootDropped(t *testing.T) {
	cur, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skip("no boot ID here:", err)
	}
	for _, c := range []struct {
		boot string
		kept bool
	}{{string(cur), true}, {"0f0e0d0c-0000-4000-8000-000000000000\n", false}} {
		state := t.TempDir()
		p := NewMounts(nil, nil, state)
		if err := p.staged.put("pv-a", "/var/lib/kubelet/x/globalmount"); err != nil {
			t.Fatal(err)
		}
		if err := p.targets.put(targetRecord{VolumeID: "pv-a", Target: "/var/lib/kubelet/pods/p/mount"}); err != nil {
			t.Fatal(err)
		}
		// A torn record, as a crash may leave one.
		if err := os.WriteFile(filepath.Join(state, "staged", "pv-b.json"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(state, "boot_id"), []byte(c.boot), 0o600); err != nil {
			t.Fatal(err)
		}
		p = NewMounts(nil, nil, state)
		at, err := p.staged.stagedAt("pv-a")
		_, published, terr := p.targets.get("/var/lib/kubelet/pods/p/mount")
		if c.kept {
			if err != nil || at == "" || terr != nil || !published {
				t.Errorf("this boot's records: staged at %q (%v), published %v (%v)", at, err, published, terr)
			}
			continue
		}
		if err != nil || at != "" || terr != nil || published {
			t.Errorf("an earlier boot's records: staged at %q (%v), published %v (%v)", at, err, published, terr)
		}
		if _, err := os.Stat(filepath.Join(state, "staged", "pv-b.json")); !os.IsNotExist(err) {
			t.Errorf("torn record of an earlier boot kept: %v", err)
		}
	}
}

// TestBlankVolumesFromTemplate: with templates, blank ext4 volumes of one
// size are staged with a single mkfs between them (the template's), no
// probe, and each gets a filesystem of its own (its own UUID).
func TestBlankVolumesFromTemplate(t *testing.T) {
	dir, _, local := filePool(t)
	run := mount.Exec{Launches: &mount.Launches{}}
	host := mount.NewHost(run)
	host.Templates = fsimage.New(filepath.Join(dir, "templates"), run)
	p := NewMounts(local, host, filepath.Join(dir, "state"))
	ctx := context.Background()
	uuids := map[string]bool{}
	for _, id := range []string{"pv-a", "pv-b", "pv-c"} {
		if _, err := local.CreateVolume(ctx, "p", pool.Volume{ID: id, Name: id, CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "ext4"}); err != nil {
			t.Fatal(err)
		}
		staging := filepath.Join(dir, id+"-staging")
		if err := p.Stage(ctx, id, staging, Access{FsType: "ext4"}); err != nil {
			t.Fatalf("stage %s: %v", id, err)
		}
		t.Cleanup(func() { _ = p.Unstage(ctx, id, staging) })
		m, ok, err := host.MountOf(staging)
		if err != nil || !ok || m.FSType != "ext4" {
			t.Fatalf("%s: staging mount %+v, %v, %v", id, m, ok, err)
		}
		out, err := exec.Command("blkid", "-p", "-s", "UUID", "-o", "value", m.Source).Output()
		if err != nil || uuids[string(out)] {
			t.Errorf("%s: UUID %q (%v) not its own", id, out, err)
		}
		uuids[string(out)] = true
	}
	if got := run.Launches.Counts(); got["mkfs.ext4"] != 1 || got["blkid"] != 0 {
		t.Errorf("three first stages launched %v, want mkfs.ext4 once (the template) and no blkid", got)
	}
}

// TestUnstageSeesDevicesBoundByOthers: a loop device that something else
// bound to the volume's image after the stage (so the pool never attached
// or found it), mounted elsewhere, stops the unstage before it touches
// anything; the staging mount, the foreign mount and the devices stay as
// they were.
func TestUnstageSeesDevicesBoundByOthers(t *testing.T) {
	dir, pl, local := filePool(t)
	run := mount.Exec{}
	host := mount.NewHost(run)
	host.Templates = fsimage.New(filepath.Join(dir, "templates"), run)
	p := NewMounts(local, host, filepath.Join(dir, "state"))
	ctx := context.Background()
	if _, err := local.CreateVolume(ctx, "p", pool.Volume{ID: "pv-a", Name: "pv-a", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(dir, "staging")
	if err := p.Stage(ctx, "pv-a", staging, Access{FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	att, _, err := pl.Attached(ctx, "pv-a")
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "pool", "volumes", "pv-a.img")
	if _, err := os.Stat(img); err != nil {
		t.Skipf("image not where this test looks: %v", err)
	}
	foreign := mount.NewLoop("/sys", "/dev") // another process
	dev, err := foreign.Attach(img, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { foreign.DetachDevice(img, dev) })
	elsewhere := filepath.Join(dir, "elsewhere")
	os.Mkdir(elsewhere, 0o700)
	if err := unix.Mount(dev, elsewhere, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(elsewhere, 0) })
	if known, _, _ := pl.Attached(ctx, "pv-a"); len(known.ReadOnly) != 0 {
		t.Fatalf("the pool knew of the foreign device: %+v", known)
	}
	if err := p.Unstage(ctx, "pv-a", staging); !errors.Is(err, pool.ErrInUse) {
		t.Fatalf("unstage with a foreign mount of the volume = %v, want ErrInUse", err)
	}
	if m, ok, _ := host.MountOf(elsewhere); !ok || m.Source != dev {
		t.Errorf("the foreign mount is gone: %+v %v", m, ok)
	}
	if m, ok, _ := host.MountOf(staging); !ok || m.Source != att.Device {
		t.Errorf("the refused unstage unmounted the staging path (now %+v %v)", m, ok)
	}
	if got, err := foreign.Known(img); err != nil || len(got) != 2 {
		t.Errorf("devices after the refused unstage: %v, %v; want %s and %s", got, err, att.Device, dev)
	}
	unix.Unmount(elsewhere, 0)
	if err := p.Unstage(ctx, "pv-a", staging); err != nil {
		t.Fatalf("unstage once the foreign mount went: %v", err)
	}
}
