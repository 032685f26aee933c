package reconcile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/nodestatus"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/transfer"
)

// peerNode is one node of a small cluster over one fake API server: a
// real file pool, its reconciler, and its transfer service on 127.0.0.1.
type peerNode struct {
	name   string
	dir    string
	local  *node.Local
	id     *transfer.Identity
	client *transfer.Client
}

func startPeer(t *testing.T, ctx context.Context, plinth *plinthfake.Clientset, name string) *peerNode {
	t.Helper()
	dir := t.TempDir()
	fp, err := file.New(file.Config{Name: "fast", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	local, err := node.NewLocal(fp)
	if err != nil {
		t.Fatal(err)
	}
	id, err := transfer.NewIdentity(name)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The node's goroutines end before its directory is removed: the fake
	// clientset's watch does not filter by label, so a node may still be
	// filling a volume labelled for another when the test returns.
	ctx, cancel := context.WithCancel(ctx)
	var running sync.WaitGroup
	t.Cleanup(func() { cancel(); running.Wait() })
	peers := &Peers{Plinth: plinth}
	srv := &transfer.Server{Identity: id, Peers: peers, Source: &TransferSource{NodeName: name, Plinth: plinth, Local: local}}
	running.Add(2)
	go func() { defer running.Done(); _ = srv.Serve(ctx, lis) }()
	core := fake.NewSimpleClientset()
	status := &nodestatus.Reporter{NodeName: name, Version: "test", Pools: local.PoolHealth, Plinth: plinth, Core: core, Interval: time.Hour,
		Transfer: &v1alpha1.TransferEndpoint{Address: lis.Addr().String(), Certificate: id.CertificatePEM()}}
	client := &transfer.Client{Identity: id, Peers: peers}
	r := &Reconciler{NodeName: name, Local: local, Plinth: plinth, Core: core, Status: status, Transfer: client}
	go func() { defer running.Done(); _ = r.Run(ctx) }()
	return &peerNode{name: name, dir: dir, local: local, id: id, client: client}
}

// sourceSnapshot makes a block volume on n holding data, and a snapshot of it.
func sourceSnapshot(t *testing.T, ctx context.Context, n *peerNode, data []byte, at int64) {
	t.Helper()
	if _, err := n.local.CreateVolume(ctx, "fast", pool.Volume{ID: "pv-src", Name: "src", CapacityBytes: 16 * mi, Mode: pool.ModeBlock}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(n.dir, "volumes", "pv-src.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, at); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := n.local.CreateSnapshot(ctx, pool.Snapshot{ID: "sn-1", Name: "snap", SourceVolumeID: "pv-src"}); err != nil {
		t.Fatal(err)
	}
}

func importObject(name, onNode, fromNode string) *v1alpha1.PlinthVolume {
	return &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelNode: onNode}, Finalizers: []string{v1alpha1.Finalizer}},
		Spec: v1alpha1.VolumeSpec{NodeName: onNode, Pool: "fast", VolumeName: name, CapacityBytes: 32 * mi, Mode: v1alpha1.ModeBlock, Claim: "ns/" + name,
			Source: &v1alpha1.VolumeSource{SnapshotID: "sn-1", NodeName: fromNode}},
	}
}

func digest(t *testing.T, path string, n int64) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) > n {
		b = b[:n]
	}
	return sha256.Sum256(b)
}

// A volume object on n2 whose source is a snapshot on n1: n2 makes the
// volume and fills it from n1 (real TLS, real pools, the objects of one
// API server); the bytes are the snapshot's, the rest of the larger
// volume zeros. A third node, with a published certificate of its own,
// asking n1 for that volume is refused, and so is n2 for a volume that
// is not filled from n1.
func TestVolumeFilledFromAnotherNode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	plinth := plinthfake.NewSimpleClientset()
	n1 := startPeer(t, ctx, plinth, "n1")
	n2 := startPeer(t, ctx, plinth, "n2")
	n3 := startPeer(t, ctx, plinth, "n3")
	data := bytes.Repeat([]byte("plinth moves volumes "), 100000)
	sourceSnapshot(t, ctx, n1, data, 3*mi)
	waitFor(t, "three PlinthNodes published", func() bool {
		l, err := plinth.PlinthV1alpha1().PlinthNodes().List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 3
	})

	volumes := plinth.PlinthV1alpha1().PlinthVolumes()
	if _, err := volumes.Create(ctx, importObject("pv-dst", "n2", "n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *v1alpha1.PlinthVolume
	waitFor(t, "pv-dst Ready on n2", func() bool {
		got, _ = volumes.Get(ctx, "pv-dst", metav1.GetOptions{})
		return got != nil && (got.Status.Phase == v1alpha1.VolumeReady || got.Status.Phase == v1alpha1.VolumeFailed)
	})
	if got.Status.Phase != v1alpha1.VolumeReady {
		t.Fatalf("pv-dst: %s %s: %s", got.Status.Phase, got.Status.Reason, got.Status.Message)
	}
	src := filepath.Join(n1.dir, "snapshots", "sn-1.img")
	dst := filepath.Join(n2.dir, "volumes", "pv-dst.img")
	if digest(t, src, 16*mi) != digest(t, dst, 16*mi) {
		t.Fatal("the filled volume differs from the snapshot")
	}
	if st, err := os.Stat(dst); err != nil || st.Size() != 32*mi {
		t.Fatalf("filled image: %v, %v; want 32 MiB", st, err)
	}
	// Beyond the snapshot's 16 MiB the larger volume reads as zeros.
	if b, err := os.ReadFile(dst); err != nil || int64(len(b)) != 32*mi || !bytes.Equal(b[16*mi:], make([]byte, 16*mi)) {
		t.Fatalf("the filled image past the snapshot's end: %v; want 16 MiB of zeros", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(n2.dir, "imports", "*")); len(leftovers) != 0 {
		t.Errorf("progress records left after the import: %v", leftovers)
	}
	v, err := n2.local.Volume(ctx, "pv-dst")
	if err != nil || v.State != pool.StateReady || v.Source == nil || v.Source.Node != "n1" {
		t.Fatalf("n2's record of pv-dst: %+v, %v", v, err)
	}

	// Another volume object that names n2 and a snapshot on n1, still
	// waiting: n3 asks for it with its own valid certificate.
	pending := importObject("pv-other", "n2", "n1")
	pending.Labels[v1alpha1.LabelNode] = "nobody" // no node reconciles it
	if _, err := volumes.Create(ctx, pending, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := &transfer.FileDestination{Image: filepath.Join(t.TempDir(), "x.img"), Progress: filepath.Join(t.TempDir(), "x.json")}
	defer d.Close()
	err = n3.client.Fill(ctx, "n1", "pv-other", d, nil)
	if status.Code(errors.Unwrap(err)) != codes.PermissionDenied {
		t.Fatalf("n3 asking for n2's volume: %v, want PermissionDenied", err)
	}
	// n2 asking n3 (which holds no source of it) is refused too.
	if err := n2.client.Fill(ctx, "n3", "pv-other", d, nil); status.Code(errors.Unwrap(err)) != codes.PermissionDenied {
		t.Fatalf("n2 asking n3 for a volume filled from n1: %v, want PermissionDenied", err)
	}
	// A volume that is Ready is not served again.
	if err := n2.client.Fill(ctx, "n1", "pv-dst", d, nil); status.Code(errors.Unwrap(err)) != codes.PermissionDenied {
		t.Fatalf("n2 asking again for its Ready volume: %v, want PermissionDenied", err)
	}
}

// A restore whose snapshot is not on the node named: the volume fails with
// NotFound, and nothing is left on the receiving node.
func TestImportOfMissingSnapshotFails(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	plinth := plinthfake.NewSimpleClientset()
	startPeer(t, ctx, plinth, "n1")
	n2 := startPeer(t, ctx, plinth, "n2")
	waitFor(t, "PlinthNodes published", func() bool {
		l, err := plinth.PlinthV1alpha1().PlinthNodes().List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 2
	})
	volumes := plinth.PlinthV1alpha1().PlinthVolumes()
	if _, err := volumes.Create(ctx, importObject("pv-dst", "n2", "n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *v1alpha1.PlinthVolume
	if err := waitLong(30*time.Second, func() bool {
		got, _ = volumes.Get(ctx, "pv-dst", metav1.GetOptions{})
		return got != nil && got.Status.Phase == v1alpha1.VolumeFailed
	}); err != nil {
		t.Fatalf("pv-dst %+v: %v", got.Status, err)
	}
	if got.Status.Reason != v1alpha1.ReasonNotFound {
		t.Errorf("reason %s (%s), want NotFound", got.Status.Reason, got.Status.Message)
	}
	// The controller deletes a failed object; the node removes what it began.
	if err := volumes.Delete(ctx, "pv-dst", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitLong(10*time.Second, func() bool {
		_, err := n2.local.Volume(ctx, "pv-dst")
		left, _ := filepath.Glob(filepath.Join(n2.dir, "volumes", "pv-dst*"))
		return errors.Is(err, pool.ErrNotFound) && len(left) == 0
	}); err != nil {
		left, _ := filepath.Glob(filepath.Join(n2.dir, "volumes", "*"))
		t.Fatalf("after the delete: %v (files %v)", err, left)
	}
}

func waitLong(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
