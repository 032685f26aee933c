package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/test/e2e/cluster"
)

// pinned runs p on node only.
func pinned(p *corev1.Pod, node string) *corev1.Pod {
	p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
	return p
}

// podLogs is where a worker's kubelet writes its pods' logs.
func podLogs(w *cluster.Worker) string { return filepath.Join(w.Dir, "pods-log") }

// sumIn is the sum=<hex> an e2e-app pod printed.
func sumIn(t *testing.T, log string) string {
	t.Helper()
	for _, l := range strings.Split(log, "\n") {
		if s, ok := strings.CutPrefix(l, "sum="); ok {
			return s
		}
	}
	t.Fatalf("no sum= in %q", log)
	return ""
}

// volumeOf is the PlinthVolume made for claim ns/name.
func volumeOf(t *testing.T, ctx context.Context, ns, name string) *v1alpha1.PlinthVolume {
	t.Helper()
	vols, err := e.plinthVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if v.Spec.Claim == ns+"/"+name {
			return v
		}
	}
	t.Fatalf("no PlinthVolume for claim %s/%s", ns, name)
	return nil
}

// Cross-node restore and clone: a volume on w1 holds 100 MiB of known
// data; a snapshot of it is restored, and the claim itself cloned, into
// pods that can run on w2 only (WaitForFirstConsumer picks w2). w2's plinth
// makes each volume and fills it from w1 over the transfer service; the
// data is the same byte for byte, and the snapshot a clone was sent from
// is gone once the clone is made.
func crossNodeCopies(t *testing.T, ctx context.Context, ws []*cluster.Worker) {
	w1, w2 := ws[0], ws[1]
	ns := namespace(t, ctx, "nodes-cross")
	sc := snaps(t)
	claimAndPod(t, ctx, ns, pvc("src", "plinth-local", "512Mi", false),
		pinned(appPod("writer", "src", false, "fill", "/data/blob", "100", "29"), w1.Name))
	want := sumIn(t, waitLogIn(t, ctx, podLogs(w1), ns, "writer", "sum=", 3*time.Minute))

	start := time.Now()
	takeSnapshot(t, ctx, sc, ns, "snap", "src")
	snapTook := time.Since(start)
	start = time.Now()
	claimAndPod(t, ctx, ns, fromSource(pvc("restored", "plinth-local", "512Mi", false), "snap", ""),
		pinned(appPod("reader", "restored", false, "sum", "/data/blob"), w2.Name))
	restoreTook := time.Since(start)
	if got := sumIn(t, waitLogIn(t, ctx, podLogs(w2), ns, "reader", "sum=", time.Minute)); got != want {
		t.Fatalf("restored on %s: sum %s, the source on %s holds %s", w2.Name, got, w1.Name, want)
	}
	if node, _ := pvNode(t, ctx, ns, "restored"); node != w2.Name {
		t.Fatalf("restored volume on %s, want %s", node, w2.Name)
	}
	if v := volumeOf(t, ctx, ns, "restored"); v.Spec.Source == nil || v.Spec.Source.NodeName != w1.Name {
		t.Fatalf("restored volume's source %+v, want one on node %s", v.Spec.Source, w1.Name)
	}

	start = time.Now()
	claimAndPod(t, ctx, ns, fromSource(pvc("clone", "plinth-local", "512Mi", false), "", "src"),
		pinned(appPod("creader", "clone", false, "sum", "/data/blob"), w2.Name))
	cloneTook := time.Since(start)
	if got := sumIn(t, waitLogIn(t, ctx, podLogs(w2), ns, "creader", "sum=", time.Minute)); got != want {
		t.Fatalf("clone on %s: sum %s, the source on %s holds %s", w2.Name, got, w1.Name, want)
	}
	if node, _ := pvNode(t, ctx, ns, "clone"); node != w2.Name {
		t.Fatalf("clone on %s, want %s", node, w2.Name)
	}
	// The snapshot the clone was sent from goes once the clone is made.
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		snaps, err := e.plinth.PlinthV1alpha1().PlinthSnapshots().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, s := range snaps.Items {
			if strings.HasPrefix(s.Spec.SnapshotName, "plinth-clone-") {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("the snapshot a clone was sent from is still there: %v", err)
	}
	logf("nodes: 100 MiB of a 512 MiB volume on %s: snapshot in %s; restored to a pod on %s in %s, cloned to one in %s (claim to pod running)",
		w1.Name, snapTook.Round(time.Millisecond), w2.Name, restoreTook.Round(time.Millisecond), cloneTook.Round(time.Millisecond))
	if err := e.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}
