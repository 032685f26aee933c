package standalone

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/test/testenv"
)

// startChild starts plinth standalone as a child process.
func startChild(t *testing.T, e *env, logf *os.File) *exec.Cmd {
	t.Helper()
	args := []string{"--endpoint", e.cfg.Endpoint, "--root", e.cfg.Root, "--node-id", "node-1", "--allowed-path", e.root}
	for _, p := range e.cfg.Pools {
		spec := fmt.Sprintf("name=%s,backend=%s,dir=%s", p.Name, p.Backend, p.Dir)
		if p.FsType != "" {
			spec += ",fstype=" + p.FsType
		}
		args = append(args, "--pool", spec)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sock := strings.TrimPrefix(e.cfg.Endpoint, "unix://")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return cmd
		}
	}
	cmd.Process.Kill()
	t.Fatal("child plinth did not listen")
	return nil
}

type ack struct {
	v    *vol
	data []byte // last payload whose write + fsync was acknowledged
}

// TestKillAnywhere SIGKILLs a real plinth process while several clients
// create, stage, publish, write and tear down volumes, then restarts it.
// After each restart every acknowledged volume exists with its last
// acknowledged data and retried calls succeed; at the end, with everything
// deleted, no image, record, subvolume, loop device or mount is left.
func TestKillAnywhere(t *testing.T) {
	e := newEnv(t)
	kills := 5
	if testing.Short() {
		kills = 2
	}
	logf, _ := os.Create(filepath.Join(t.TempDir(), "plinth.log"))
	sock := strings.TrimPrefix(e.cfg.Endpoint, "unix://")
	var mu sync.Mutex
	acked := map[string]*ack{}
	ops := 0
	pools := []struct {
		pool string
		cap  *csi.VolumeCapability
		size int64
	}{{"fext4", testenv.MountCap(""), 32 << 20}, {"fext4", testenv.BlockCap(), 16 << 20}, {"bt", testenv.MountCap(""), 32 << 20}, {"fxfs", testenv.MountCap(""), 320 << 20}}

	for round := 0; round < kills; round++ {
		cmd := startChild(t, e, logf)
		c := testenv.Dial(t, sock)
		// Check what the last round acknowledged.
		for name, a := range acked {
			create(t, c, a.v) // a retried create succeeds and returns the same volume
			if a.data != nil {
				target := e.stagePublish(t, c, a.v)
				if got := readData(t, a.v, target, len(a.data)); !bytes.Equal(got, a.data) {
					t.Fatalf("round %d: %s holds %q, acknowledged %q", round, name, got, a.data)
				}
				e.unpublishUnstage(t, c, a.v)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := 0; w < 6; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					p := pools[(w+i)%len(pools)]
					v := &vol{name: fmt.Sprintf("r%d-w%d-%d", round, w, i), pool: p.pool, cap: p.cap, size: p.size}
					resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v.name, CapacityRange: &csi.CapacityRange{RequiredBytes: v.size},
						VolumeCapabilities: []*csi.VolumeCapability{v.cap}, Parameters: map[string]string{"pool": v.pool}})
					if err != nil {
						return
					}
					v.id = resp.GetVolume().GetVolumeId()
					mu.Lock()
					acked[v.name] = &ack{v: v}
					ops++
					mu.Unlock()
					staging, target := e.paths(v)
					if _, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: v.cap}); err != nil {
						return
					}
					if _, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: v.cap}); err != nil {
						return
					}
					payload := []byte(fmt.Sprintf("data of %s", v.name))
					if err := tryWrite(v, target, payload); err != nil {
						return
					}
					mu.Lock()
					acked[v.name].data = payload
					ops += 3
					mu.Unlock()
					if i%2 == 0 { // leave some volumes published when the kill comes
						continue
					}
					if _, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target}); err != nil {
						return
					}
					if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging}); err != nil {
						return
					}
					mu.Lock()
					ops += 2
					mu.Unlock()
				}
			}(w)
		}
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		cancel()
		wg.Wait()
	}

	// Final restart: tear everything down through plinth.
	cmd := startChild(t, e, logf)
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	c := testenv.Dial(t, sock)
	ctx := context.Background()
	list, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, a := range acked {
		staging, target := e.paths(a.v)
		if _, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: a.v.id, TargetPath: target}); err != nil {
			t.Fatalf("unpublish %s: %v", a.v.name, err)
		}
		if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: a.v.id, StagingTargetPath: staging}); err != nil {
			t.Fatalf("unstage %s: %v", a.v.name, err)
		}
		checked++
	}
	// Volumes whose create was cut off before its reply are listed too.
	for _, en := range list.GetEntries() {
		id := en.GetVolume().GetVolumeId()
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil && status.Code(err) != codes.NotFound {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	leaks := leaksUnder(t, e)
	t.Logf("kills survived: %d, operations acknowledged: %d, volumes checked: %d (listed at end: %d), leaks found: %d",
		kills, ops, checked, len(list.GetEntries()), len(leaks))
	for _, l := range leaks {
		t.Errorf("leak: %s", l)
	}
}

func tryWrite(v *vol, target string, payload []byte) error {
	path, flags := target, os.O_WRONLY
	if v.cap.GetBlock() == nil {
		path, flags = filepath.Join(target, "data"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(payload); err != nil {
		return err
	}
	return f.Sync()
}

// leaksUnder lists what plinth left: files in the pools, mounts under the
// kubelet root, loop devices backed by pool files.
func leaksUnder(t *testing.T, e *env) []string {
	var out []string
	for _, d := range e.poolDirs {
		filepath.WalkDir(d, func(p string, de os.DirEntry, err error) error {
			if err == nil && p != d && p != filepath.Join(d, "volumes") && p != filepath.Join(d, "snapshots") {
				out = append(out, "file "+p)
				if de.IsDir() {
					return filepath.SkipDir
				}
			}
			return nil
		})
	}
	mounts, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(e.root))
	for _, m := range mounts {
		out = append(out, "mount "+m.Mountpoint)
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, d := range e.poolDirs {
			if strings.HasPrefix(string(b), d+"/") {
				out = append(out, "loop "+f+" -> "+strings.TrimSpace(string(b)))
			}
		}
	}
	return out
}
