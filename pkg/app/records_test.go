package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// v010 holds the records plinth v0.1.0 wrote (testdata/records/v0.1.0,
// its README says how they were made).
const v010 = "../../testdata/records/v0.1.0"

const (
	v010FsVol  = "pv-dee66db740340d89c2c93141cdd51960d3033113" // fs-vol, ext4, 64 MiB
	v010BlkVol = "pv-575f96dfe7187981b3c363803174d623e396d785" // blk-vol, block, 16 MiB
)

// newerCopy copies a record of v0.1.0 to dst with its version field made
// 99, as a newer plinth might write it.
func newerCopy(t *testing.T, src, dst, field string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(v010, src))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), `"`+field+`": 1`, `"`+field+`": 99`, 1)
	if edit != nil {
		s = edit(s)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	os.Chtimes(dst, old, old)
}

// treeState is every file under dir: its bytes and modification time.
func treeState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&os.ModeSocket != 0 || strings.HasSuffix(p, ".lock") || filepath.Base(p) == "boot_id" {
			return err
		}
		b, _ := os.ReadFile(p)
		fi, _ := d.Info()
		out[p] = string(b) + " @ " + fi.ModTime().String()
		return nil
	})
	return out
}

// standalone runs plinth standalone over root (its default pool in
// root/pools/default) and returns a connection to its CSI socket.
func standalone(t *testing.T, root string, allowed ...string) *grpc.ClientConn {
	t.Helper()
	cfg := StandaloneConfig{CSIConfig: CSIConfig{Root: root, NodeID: "n1", DriverName: "plinth.example.com",
		TopologyKey: "topology.plinth.example.com/node", SysfsRoot: "/sys", DevRoot: "/dev", AllowedPaths: allowed}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunStandalone(ctx, cfg) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient("unix://"+filepath.Join(root, "csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// Served: the start (the boot's record among it) is over, so a test
	// that snapshots the root sees what the calls did, not the start.
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	defer pcancel()
	if _, err := csipb.NewIdentityClient(conn).Probe(pctx, &csipb.ProbeRequest{}); err != nil {
		t.Fatalf("plinth standalone on %s did not answer: %v", root, err)
	}
	return conn
}

func wantRefused(t *testing.T, what string, err error, says ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: answered OK", what)
		return
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: %q does not say %q", what, err, s)
		}
	}
}

// plinth standalone over the file pool v0.1.0 made serves its volumes;
// with one of the pool's records of a newer version, the pool does not
// open (plinth starts, the pool stands unavailable with the reason, which
// every call on it answers) and nothing in it changes.
func TestStandaloneV010AndNewerPool(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the root's lock, the CSI socket)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, newer := range []bool{false, true} {
		root := t.TempDir()
		dir := filepath.Join(root, "pools", "default")
		if err := os.CopyFS(dir, os.DirFS(filepath.Join(v010, "pools", "files"))); err != nil {
			t.Fatal(err)
		}
		rec := filepath.Join("volumes", v010FsVol+".json")
		if newer {
			newerCopy(t, filepath.Join("pools", "files", rec), filepath.Join(dir, rec), "schema", nil)
		}
		before := treeState(t, dir)
		ctrl := csipb.NewControllerClient(standalone(t, root))
		list, err := ctrl.ListVolumes(ctx, &csipb.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if !newer {
			if len(list.Entries) != 4 {
				t.Errorf("v0.1.0's pool: %d volumes listed, want 4", len(list.Entries))
			}
			continue
		}
		if len(list.Entries) != 0 {
			t.Errorf("a pool that did not open lists %d volumes", len(list.Entries))
		}
		// The reason is in the start's log and in the pool's status
		// (TestOpenPoolsNewerIsUnavailable); a delete is not taken for
		// done while the pool may hold the volume.
		_, err = ctrl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: v010BlkVol})
		wantRefused(t, "DeleteVolume", err, "pool default cannot be read")
		_, err = ctrl.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: v010FsVol})
		wantRefused(t, "CreateSnapshot", err)
		_, err = ctrl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "new", CapacityRange: &csipb.CapacityRange{RequiredBytes: 16 << 20},
			VolumeCapabilities: []*csipb.VolumeCapability{{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
				AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}})
		wantRefused(t, "CreateVolume", err)
		if d := cmp.Diff(before, treeState(t, dir)); d != "" {
			t.Errorf("the pool's files changed (-before +after):\n%s", d)
		}
	}
}

// OpenPools stands a pool whose records are newer up as pool.Unavailable
// with the reason, beside the pools that open.
func TestOpenPoolsNewerIsUnavailable(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	newerCopy(t, "pools/files/snapshots/sn-733e21169bbafc161f10ae50f0c8a4b97a9ddc82.json",
		filepath.Join(b, "snapshots", "sn-733e21169bbafc161f10ae50f0c8a4b97a9ddc82.json"), "schema", nil)
	pools, err := OpenPools(context.Background(), []PoolSpec{{Name: "a", Backend: "file", Dir: a}, {Name: "b", Backend: "file", Dir: b}}, nil, nil)
	if err != nil || len(pools) != 2 {
		t.Fatalf("OpenPools = %v, %v", pools, err)
	}
	if _, ok := pools[0].(pool.Unavailable); ok {
		t.Error("pool a unavailable")
	}
	u, ok := pools[1].(pool.Unavailable)
	if !ok || u.Name() != "b" || u.Backend() != "file" {
		t.Fatalf("pool b: %#v", pools[1])
	}
	_, err = u.Stats(context.Background())
	wantRefused(t, "Stats", err, "pool b cannot be opened", "snapshot record", "version 99")
}

// Stage and publish records of a newer version: the calls that need them
// refuse with the file named (an unpublish of that target, a stage,
// publish or delete of any volume: a record this plinth cannot read may
// be of any), and the records stay as they are.
func TestStandaloneNewerStageAndPublishRecords(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the root's lock, the CSI socket)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root, k := t.TempDir(), t.TempDir()
	if err := os.CopyFS(filepath.Join(root, "pools", "default"), os.DirFS(filepath.Join(v010, "pools", "files"))); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(k, "pods", "fs-target")
	os.MkdirAll(filepath.Dir(target), 0o750)
	sum := sha256.Sum256([]byte(target))
	pub := filepath.Join(root, "targets", hex.EncodeToString(sum[:])+".json")
	newerCopy(t, "targets/bc0500e7c7f72f1449e038e84f43cdebefa2977693ecd09c96ec5a569a80518d.json", pub, "schema",
		func(s string) string { return strings.Replace(s, "/tmp/rec/k8s/pods/fs-target", target, 1) })
	conn := standalone(t, root, k)
	nodeC, ctrl := csipb.NewNodeClient(conn), csipb.NewControllerClient(conn)
	mnt := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	// A publish record of a newer version.
	before := treeState(t, root)
	_, err := nodeC.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: v010FsVol, TargetPath: target})
	wantRefused(t, "NodeUnpublishVolume", err, "publish record "+pub, "version 99", "up to 1")
	_, err = nodeC.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: v010FsVol, TargetPath: target,
		StagingTargetPath: filepath.Join(k, "stage"), VolumeCapability: mnt})
	wantRefused(t, "NodePublishVolume", err)
	_, err = ctrl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: v010BlkVol})
	wantRefused(t, "DeleteVolume", err, "publish record "+pub, "version 99")
	if d := cmp.Diff(before, treeState(t, root)); d != "" {
		t.Errorf("files changed (-before +after):\n%s", d)
	}
	// A stage record of a newer version too.
	staged := filepath.Join(root, "staged", v010FsVol+".json")
	newerCopy(t, "staged/"+v010FsVol+".json", staged, "schema", nil)
	before = treeState(t, root)
	_, err = nodeC.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: v010FsVol, StagingTargetPath: filepath.Join(k, "stage"), VolumeCapability: mnt})
	wantRefused(t, "NodeStageVolume", err, "stage record "+staged, "version 99")
	_, err = nodeC.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: v010FsVol, StagingTargetPath: filepath.Join(k, "stage")})
	wantRefused(t, "NodeUnstageVolume", err, "version 99")
	if d := cmp.Diff(before, treeState(t, root)); d != "" {
		t.Errorf("files changed (-before +after):\n%s", d)
	}
}
