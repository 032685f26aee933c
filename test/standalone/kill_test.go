package standalone

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/test/testenv"
)

// startChild starts plinth standalone with e's configuration as a child
// process.
func startChild(t *testing.T, e *env, logf *os.File) *exec.Cmd {
	t.Helper()
	args := []string{"--endpoint", e.cfg.Endpoint, "--root", e.cfg.Root, "--node-id", "node-1", "--allowed-path", e.root, "--metrics-address", "127.0.0.1:0"}
	for _, p := range e.cfg.Pools {
		spec := fmt.Sprintf("name=%s,backend=%s,dir=%s", p.Name, p.Backend, p.Dir)
		if p.FsType != "" {
			spec += ",fstype=" + p.FsType
		}
		args = append(args, "--pool", spec)
	}
	return testenv.StartChild(t, strings.TrimPrefix(e.cfg.Endpoint, "unix://"), args, logf)
}

// ack is what plinth acknowledged about one volume.
type ack struct {
	v    *vol
	data []byte // payload whose write + fsync was acknowledged
	size int64  // capacity acknowledged by an expansion
	// expanding: an expansion was sent; without its reply the volume may
	// have either size.
	expanding bool
	deleted   bool // its DeleteVolume was acknowledged
	// deleting: a delete was sent; without its reply the volume may be
	// gone, or half gone until the CO retries the delete.
	deleting bool
}

// killsWanted: PLINTH_KILLS (make reliability sets 100), else 5.
func killsWanted(t *testing.T) int {
	if s := os.Getenv("PLINTH_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("PLINTH_KILLS=%q", s)
		}
		return n
	}
	if testing.Short() {
		return 2
	}
	return 5
}

type kinds struct {
	pool string
	cap  *csi.VolumeCapability
	size int64
}

var workload = []kinds{{"fext4", testenv.MountCap(""), 32 << 20}, {"fext4", testenv.BlockCap(), 16 << 20}, {"bt", testenv.MountCap(""), 32 << 20}, {"fxfs", testenv.MountCap(""), 320 << 20}}

// TestKillAnywhere SIGKILLs a real plinth process at a random moment while
// several clients create, stage, publish, write, expand, snapshot, restore,
// unpublish, unstage and delete volumes, then restarts it. After every
// restart each acknowledged volume exists with its acknowledged data and
// size, each acknowledged delete stays deleted, and retried calls succeed;
// then everything is torn down through plinth. At the end nothing is left:
// no image, record, subvolume, snapshot, loop device or mount.
func TestKillAnywhere(t *testing.T) {
	e := newEnv(t)
	kills := killsWanted(t)
	logPath := filepath.Join(t.TempDir(), "plinth.log")
	if d := os.Getenv("PLINTH_KILL_LOG"); d != "" {
		logPath = d
	}
	logf, _ := os.Create(logPath)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			t.Logf("plinth log, last lines:\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	sock := strings.TrimPrefix(e.cfg.Endpoint, "unix://")
	var mu sync.Mutex
	acked := map[string]*ack{}
	tried := map[string]*vol{} // by ID: every volume a create was sent for
	ops, checked := 0, 0

	for round := 0; round <= kills; round++ {
		cmd := startChild(t, e, logf)
		c := testenv.Dial(t, sock)
		checked += verify(t, e, c, round, acked)
		teardown(t, e, c, tried)
		acked, tried = map[string]*ack{}, map[string]*vol{}
		if round == kills {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			break
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := 0; w < 6; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					n := cycle(ctx, e, c, fmt.Sprintf("r%d-w%d-%d", round, w, i), i+w, &mu, acked, tried)
					mu.Lock()
					ops += n
					mu.Unlock()
				}
			}(w)
		}
		time.Sleep(time.Duration(50+rand.IntN(450)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		cancel()
		wg.Wait()
	}
	leaks := leaksUnder(t, e)
	t.Logf("kills survived: %d, operations acknowledged: %d, acknowledged volumes checked after restarts: %d, leaks found: %d", kills, ops, checked, len(leaks))
	for _, l := range leaks {
		t.Errorf("leak: %s", l)
	}
}

// cycle runs one volume's life; it returns how many calls were
// acknowledged and stops at the first error (the kill).
func cycle(ctx context.Context, e *env, c *testenv.Client, name string, i int, mu *sync.Mutex, acked map[string]*ack, tried map[string]*vol) int {
	k := workload[i%len(workload)]
	v := &vol{name: name, pool: k.pool, cap: k.cap, size: k.size}
	record := func(f func()) { mu.Lock(); f(); mu.Unlock() }
	v.id = volumeIDOf(name)
	record(func() { tried[v.id] = v })
	if _, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v.name, CapacityRange: &csi.CapacityRange{RequiredBytes: v.size},
		VolumeCapabilities: []*csi.VolumeCapability{v.cap}, Parameters: map[string]string{"pool": v.pool}}); err != nil {
		return 0
	}
	a := &ack{v: v}
	record(func() { acked[v.name] = a })
	staging, target := e.paths(v)
	if _, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: v.cap}); err != nil {
		return 1
	}
	if _, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: v.cap}); err != nil {
		return 2
	}
	payload := []byte("data of " + v.name)
	if err := tryWrite(v, target, payload); err != nil {
		return 3
	}
	record(func() { a.data = payload })
	n := 4
	switch i % 3 {
	case 0: // grow it while published
		record(func() { a.expanding = true })
		ce, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.id, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * v.size}})
		if err != nil {
			return n
		}
		if ce.GetNodeExpansionRequired() {
			if _, err := c.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: target}); err != nil {
				return n
			}
		}
		record(func() { a.size = 2 * v.size })
		n++
	case 1: // snapshot it and restore the snapshot into a new volume
		if v.pool == "fxfs" {
			break // 320 MiB copies would make rounds long
		}
		sn, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: v.name + "-snap", SourceVolumeId: v.id})
		if err != nil {
			return n
		}
		r := &vol{name: v.name + "-restored", pool: v.pool, cap: v.cap, size: v.size, source: sn.GetSnapshot().GetSnapshotId()}
		r.id = volumeIDOf(r.name)
		record(func() { tried[r.id] = r })
		if _, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: r.name, CapacityRange: &csi.CapacityRange{RequiredBytes: r.size},
			VolumeCapabilities: []*csi.VolumeCapability{r.cap}, Parameters: map[string]string{"pool": r.pool},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: r.source}}}}); err != nil {
			return n + 1
		}
		record(func() { acked[r.name] = &ack{v: r, data: payload} })
		n += 2
	}
	if i%2 == 0 {
		return n // stays published into the kill
	}
	if _, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target}); err != nil {
		return n
	}
	if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging}); err != nil {
		return n + 1
	}
	record(func() { a.deleting = true })
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
		return n + 2
	}
	record(func() { a.deleted = true })
	return n + 3
}

// volumeIDOf is plinth's name → ID derivation, as a CO would learn it from
// CreateVolume's reply; known up front so that volumes whose reply the
// kill swallowed can be torn down by ID.
func volumeIDOf(name string) string {
	return volumeIDFunc(name)
}

// verify checks, after a restart, what the previous round acknowledged.
func verify(t *testing.T, e *env, c *testenv.Client, round int, acked map[string]*ack) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	for name, a := range acked {
		got, err := c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: a.v.id})
		if a.deleted {
			if status.Code(err) != codes.NotFound {
				t.Fatalf("round %d: %s was deleted (acknowledged) but is back: %v", round, name, err)
			}
			n++
			continue
		}
		if a.deleting {
			continue // teardown retries the delete, as the CO would
		}
		if err != nil {
			t.Fatalf("round %d: acknowledged volume %s lost: %v", round, name, err)
		}
		if got.GetVolume().GetCapacityBytes() < a.size {
			t.Fatalf("round %d: %s has %d bytes, expansion to %d was acknowledged", round, name, got.GetVolume().GetCapacityBytes(), a.size)
		}
		if a.v.source == "" && !a.expanding {
			create(t, c, a.v) // a retried create succeeds and returns the same volume
		}
		if a.data != nil {
			target := e.stagePublish(t, c, a.v) // idempotent over a publish the kill left behind
			if got := readData(t, a.v, target, len(a.data)); !bytes.Equal(got, a.data) {
				t.Fatalf("round %d: %s holds %q, acknowledged %q", round, name, got, a.data)
			}
		}
		n++
	}
	return n
}

// teardown unpublishes, unstages and deletes every volume a create was
// sent for, and every snapshot, through plinth.
func teardown(t *testing.T, e *env, c *testenv.Client, tried map[string]*vol) {
	t.Helper()
	ctx := context.Background()
	for _, v := range tried {
		staging, target := e.paths(v)
		for _, call := range []func() error{
			func() error {
				_, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target})
				return err
			},
			func() error {
				_, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging})
				return err
			},
		} {
			if err := call(); err != nil && status.Code(err) != codes.NotFound {
				t.Fatalf("teardown %s: %v", v.name, err)
			}
		}
	}
	snaps, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range snaps.GetEntries() {
		if _, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sn.GetSnapshot().GetSnapshotId()}); err != nil {
			t.Fatalf("delete snapshot: %v", err)
		}
	}
	list, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range list.GetEntries() {
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: en.GetVolume().GetVolumeId()}); err != nil {
			t.Fatalf("delete %s: %v", en.GetVolume().GetVolumeId(), err)
		}
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
	mounts, _ := mount.Mounts()
	for _, m := range mounts {
		if m.Under(e.root) {
			out = append(out, "mount "+m.Mountpoint)
		}
	}
	// What the node recorded of publishes and stages goes with them.
	for _, d := range []string{"targets", "staged"} {
		recs, _ := filepath.Glob(filepath.Join(e.cfg.Root, d, "*.json"))
		for _, r := range recs {
			out = append(out, "record "+r)
		}
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
