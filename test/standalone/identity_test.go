package standalone

import (
	"bytes"
	"context"
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

// These tests take the seat of an administrator whose paths are not what
// the kernel prints (a pool directory reached through a symlink) and of
// another process that binds loop devices to plinth's images or mounts
// them behind plinth's back: plinth must still know which devices are a
// volume's, and never detach, unmount or delete what is not its to.

// loopsBacking lists the loop devices (/dev/loopN) whose backing file is
// img's inode, asked of the kernel (LOOP_GET_STATUS64), whatever path
// sysfs prints for it.
func loopsBacking(t *testing.T, img string) []string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(img, &st); err != nil {
		t.Fatalf("stat %s: %v", img, err)
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		info, err := unix.IoctlLoopGetStatus64(fd)
		unix.Close(fd)
		if err == nil && info.Device == st.Dev && info.Inode == st.Ino {
			out = append(out, dev)
		}
	}
	return out
}

// foreignLoop binds a loop device to img with losetup, as another process
// would (read-only with ro), and detaches it when the test ends.
func foreignLoop(t *testing.T, img string, ro bool) string {
	t.Helper()
	args := []string{"--find", "--show"}
	if ro {
		args = append(args, "--read-only")
	}
	out, err := exec.Command("losetup", append(args, img)...).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s: %v: %s", img, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "--detach", dev).Run() })
	return dev
}

// TestSymlinkedPoolKeepsVolumeIdentity: a file pool whose directory is a
// symlink, and one whose directory's parent is, under a state root that
// is a symlink too. The kernel names the images of their loop devices by
// the resolved path. After a restart (a new plinth over the same root,
// knowing nothing of the devices) a delete of a staged and published
// volume, filesystem or block, is refused with its image intact, and
// unpublish and unstage release everything: no device is left bound to an
// image, and the delete then goes through.
func TestSymlinkedPoolKeepsVolumeIdentity(t *testing.T) {
	testenv.RequireHost(t, "losetup")
	xfs := testenv.Filesystem(t, "xfs", 1<<30)
	top := t.TempDir()
	kubelet := filepath.Join(top, "kubelet")
	os.MkdirAll(kubelet, 0o750)
	// pool "link": its directory is a symlink to a directory on xfs.
	os.MkdirAll(filepath.Join(xfs, "real-link"), 0o700)
	linkDir := filepath.Join(top, "pool-link")
	// pool "parent": its directory lies below a symlink.
	os.MkdirAll(filepath.Join(xfs, "real-parent", "pool"), 0o700)
	parentLink := filepath.Join(top, "pools")
	os.MkdirAll(filepath.Join(xfs, "state"), 0o700)
	stateLink := filepath.Join(top, "state")
	for link, to := range map[string]string{linkDir: filepath.Join(xfs, "real-link"), parentLink: filepath.Join(xfs, "real-parent"), stateLink: filepath.Join(xfs, "state")} {
		if err := os.Symlink(to, link); err != nil {
			t.Fatal(err)
		}
	}
	cfg := app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(top, "csi.sock"),
		Root:     stateLink,
		Pools: []app.PoolSpec{
			{Name: "link", Backend: "file", Dir: linkDir, FsType: "ext4"},
			{Name: "parent", Backend: "file", Dir: filepath.Join(parentLink, "pool"), FsType: "ext4"},
		},
		AllowedPaths: []string{kubelet},
	}}
	realDirs := map[string]string{"link": filepath.Join(xfs, "real-link"), "parent": filepath.Join(xfs, "real-parent", "pool")}
	e := &env{root: kubelet, cfg: cfg}

	sock, stop := testenv.StandaloneStoppable(t, cfg)
	c := testenv.Dial(t, sock)
	var vols []*vol
	for _, p := range []string{"link", "parent"} {
		vols = append(vols, &vol{name: p + "-fs", pool: p, cap: testenv.MountCap(""), size: 64 << 20},
			&vol{name: p + "-block", pool: p, cap: testenv.BlockCap(), size: 16 << 20})
	}
	payload := func(v *vol) []byte { return []byte("payload of " + v.name) }
	image := func(v *vol) string { return filepath.Join(realDirs[v.pool], "volumes", v.id+".img") }
	for _, v := range vols {
		create(t, c, v)
		writeData(t, v, e.stagePublish(t, c, v), payload(v))
		if n := len(loopsBacking(t, image(v))); n != 1 {
			t.Fatalf("%s: %d loop devices of its image after stage, want 1", v.name, n)
		}
	}

	stop()
	sock, _ = testenv.StandaloneStoppable(t, cfg)
	c = testenv.Dial(t, sock)
	ctx := context.Background()
	for _, v := range vols {
		_, target := e.paths(v)
		_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
		wantCode(t, "delete of staged and published "+v.name+" after a restart", err, codes.FailedPrecondition)
		if _, err := os.Stat(image(v)); err != nil {
			t.Errorf("%s: image after the refused delete: %v", v.name, err)
			continue
		}
		if got := readData(t, v, target, len(payload(v))); !bytes.Equal(got, payload(v)) {
			t.Errorf("%s holds %q after the refused delete, want %q", v.name, got, payload(v))
		}
	}
	for _, v := range vols {
		staging, target := e.paths(v)
		if _, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target}); err != nil {
			t.Errorf("unpublish %s after a restart: %v", v.name, err)
		}
		if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging}); err != nil {
			t.Errorf("unstage %s after a restart: %v", v.name, err)
		}
		if m := mountAt(t, staging); m != nil && v.cap.GetMount() != nil {
			t.Errorf("%s: staging path still mounted after unstage: %+v", v.name, m)
		}
		if _, err := os.Stat(image(v)); err == nil {
			if devs := loopsBacking(t, image(v)); len(devs) != 0 {
				t.Errorf("%s: loop devices %v still bound to its image after unstage", v.name, devs)
			}
		}
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
			t.Errorf("delete %s once unstaged: %v", v.name, err)
		}
	}
}

// newFilePoolEnv is a running plinth with one file pool "f" (ext4 volumes)
// on an xfs of its own.
func newFilePoolEnv(t *testing.T) *npEnv {
	t.Helper()
	testenv.RequireHost(t, "losetup")
	xfs := testenv.Filesystem(t, "xfs", 1<<30)
	top := t.TempDir()
	e := &env{root: filepath.Join(top, "kubelet"), poolDirs: []string{filepath.Join(xfs, "f")}}
	os.MkdirAll(e.root, 0o750)
	os.MkdirAll(e.poolDirs[0], 0o700)
	e.cfg = app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint:     "unix://" + filepath.Join(top, "csi.sock"),
		Root:         filepath.Join(top, "state"),
		Pools:        []app.PoolSpec{{Name: "f", Backend: "file", Dir: e.poolDirs[0], FsType: "ext4"}},
		AllowedPaths: []string{e.root},
	}}
	return &npEnv{env: e, c: testenv.Dial(t, testenv.Standalone(t, e.cfg))}
}

// TestFailedStageLeavesForeignDevices: a loop device another process bound
// to a volume's image after plinth last looked (read-write, which the stage
// then uses, or read-only) stays bound when the stage fails after its
// attach: a failed stage releases only a device it made itself.
func TestFailedStageLeavesForeignDevices(t *testing.T) {
	e := newFilePoolEnv(t)
	for _, ro := range []bool{false, true} {
		name := map[bool]string{false: "rw", true: "ro"}[ro]
		t.Run(name, func(t *testing.T) {
			v := e.npVolume(t, "foreign-"+name, "f", testenv.MountCap(""))
			staging, _ := e.paths(v)
			// A stage and an unstage first: plinth has looked for the
			// image's devices, and found none left.
			if err := e.stage(v, staging); err != nil {
				t.Fatal(err)
			}
			if err := e.unstage(v, staging); err != nil {
				t.Fatal(err)
			}
			img := e.imageOf(v)
			dev := foreignLoop(t, img, ro)
			// A mount option ext4 rejects: the stage fails after its attach.
			if err := e.stage(v, staging, "data=bogus"); err == nil {
				t.Fatal("stage with an option ext4 rejects succeeded")
			}
			if m := mountAt(t, staging); m != nil {
				t.Errorf("staging path mounted after a failed stage: %+v", m)
			}
			devs := loopsBacking(t, img)
			if !slicesContains(devs, dev) {
				t.Errorf("the failed stage released %s, bound to the image by another process (devices now %v)", dev, devs)
			}
			if len(devs) != 1 {
				t.Errorf("devices of the image after the failed stage: %v, want only the foreign %s", devs, dev)
			}
			_ = exec.Command("losetup", "--detach", dev).Run()
			if err := e.deleteVolume(v); err != nil {
				t.Errorf("delete once the foreign device went: %v", err)
			}
		})
	}
}

func slicesContains(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// TestRefusedUnstageLeavesStagingMount: with the volume's filesystem
// mounted elsewhere too, by a bind of a directory inside the staging
// mount or through another loop device of its image, NodeUnstageVolume is
// refused and leaves the staging mount where it was, its data readable;
// once the other mount goes, the unstage goes through.
func TestRefusedUnstageLeavesStagingMount(t *testing.T) {
	e := newFilePoolEnv(t)
	cases := map[string]func(t *testing.T, img, staging, elsewhere string){
		"bind of a directory inside": func(t *testing.T, img, staging, elsewhere string) {
			if err := os.Mkdir(filepath.Join(staging, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount(filepath.Join(staging, "sub"), elsewhere, "", unix.MS_BIND, ""); err != nil {
				t.Fatal(err)
			}
		},
		"another loop device of the image": func(t *testing.T, img, staging, elsewhere string) {
			dev := foreignLoop(t, img, true)
			if err := unix.Mount(dev, elsewhere, "ext4", unix.MS_RDONLY, "noload"); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, mountElsewhere := range cases {
		t.Run(name, func(t *testing.T) {
			v := e.npVolume(t, "elsewhere-"+strings.ReplaceAll(name, " ", "-"), "f", testenv.MountCap(""))
			staging, target := e.stagedAndPublished(t, v)
			writeData(t, v, target, []byte("tenant data"))
			elsewhere := filepath.Join(t.TempDir(), "elsewhere")
			os.Mkdir(elsewhere, 0o700)
			mountElsewhere(t, e.imageOf(v), staging, elsewhere)
			t.Cleanup(func() { unix.Unmount(elsewhere, unix.MNT_DETACH) })
			if err := e.unpublish(v, target); err != nil {
				t.Fatal(err)
			}
			wantCode(t, "unstage while mounted elsewhere", e.unstage(v, staging), codes.FailedPrecondition)
			if m := mountAt(t, staging); m == nil {
				t.Errorf("the refused unstage unmounted the staging path")
			} else if got := readData(t, v, staging, len("tenant data")); string(got) != "tenant data" {
				t.Errorf("staging mount holds %q after the refused unstage", got)
			}
			if err := unix.Unmount(elsewhere, 0); err != nil {
				t.Fatal(err)
			}
			if err := e.unstage(v, staging); err != nil {
				t.Errorf("unstage once the other mount went: %v", err)
			}
			if m := mountAt(t, staging); m != nil {
				t.Errorf("staging path still mounted after unstage: %+v", m)
			}
		})
	}
}
