package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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

// moveStatefulSet is a StatefulSet of one pod that fills its claim (class,
// 512 MiB) with 100 MiB of known data once and prints its checksum, on node
// if it can.
func moveStatefulSet(name, class, node string) *appsv1.StatefulSet {
	return fillStatefulSet(name, class, node, "512Mi", 100)
}

// fillStatefulSet is moveStatefulSet with a claim of size holding mib MiB.
func fillStatefulSet(name, class, node, size string, mib int) *appsv1.StatefulSet {
	ss := statefulSet(name, class, node)
	ss.Spec.Template.Spec.Containers[0].Args = []string{"fill", "/data/blob", strconv.Itoa(mib), "31"}
	ss.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse(size)
	return ss
}

// blockStatefulSet is fillStatefulSet with a block claim: the pod fills
// the device's first mib MiB once and prints the whole device's checksum.
func blockStatefulSet(name, class, node, size string, mib int) *appsv1.StatefulSet {
	ss := fillStatefulSet(name, class, node, size, mib)
	spec := &ss.Spec.Template.Spec
	spec.Containers[0].VolumeMounts = nil
	spec.Containers[0].VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/dev/data"}}
	spec.Containers[0].Args = []string{"fillblock", "/dev/data", strconv.Itoa(mib), "31"}
	block := corev1.PersistentVolumeBlock
	ss.Spec.VolumeClaimTemplates[0].Spec.VolumeMode = &block
	return ss
}

// logsOf is where the node a pod runs on keeps its logs.
func logsOf(ws []*cluster.Worker, node string) string {
	for _, w := range ws {
		if w.Name == node {
			return podLogs(w)
		}
	}
	return "/var/log/pods"
}

// kubectl plinth drain of w1 carrying five StatefulSets (128 MiB claims
// holding 20 MiB each): w1 is cordoned, each claim moved (three at once)
// to another node, the pods come back there with their data; nothing of
// theirs is left on w1. w1 is uncordoned afterwards for the scenarios
// that follow.
func drainNode(t *testing.T, ctx context.Context, ws []*cluster.Worker) {
	w1 := ws[0]
	ns := namespace(t, ctx, "nodes-drain")
	// Made on w1 only; the claims bound, nothing holds their pods there.
	storageClass(t, ctx, "plinth-drain-small", storagev1.VolumeBindingWaitForFirstConsumer, map[string]string{"backend": "file"}, w1.Name)
	t.Cleanup(func() {
		_, _ = e.client.CoreV1().Nodes().Patch(context.Background(), w1.Name, types.MergePatchType, []byte(`{"spec":{"unschedulable":false}}`), metav1.PatchOptions{})
	})
	const sets = 5
	want := map[string]string{}
	for i := range sets {
		name := fmt.Sprintf("d%d", i)
		if _, err := e.client.AppsV1().StatefulSets(ns).Create(ctx, fillStatefulSet(name, "plinth-drain-small", w1.Name, "128Mi", 20), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range sets {
		pod := waitPodRunning(t, ctx, ns, fmt.Sprintf("d%d-0", i), 3*time.Minute)
		if pod.Spec.NodeName != w1.Name {
			t.Fatalf("%s runs on %s, want %s", pod.Name, pod.Spec.NodeName, w1.Name)
		}
		want[pod.Name] = sumIn(t, waitLogIn(t, ctx, podLogs(w1), ns, pod.Name, "sum=", 2*time.Minute))
	}
	start := time.Now()
	out := kubectlPlinth(t, "drain", w1.Name, "--parallel", "3", "--timeout", "10m")
	took := time.Since(start)
	logf("nodes: kubectl plinth drain %s:\n%s", w1.Name, out)
	if !strings.Contains(out, fmt.Sprintf("%d moved, 0 failed", sets)) {
		t.Fatalf("drain did not move all %d claims:\n%s", sets, out)
	}
	where := map[string]int{}
	for i := range sets {
		name := fmt.Sprintf("d%d-0", i)
		var pod *corev1.Pod
		if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			p, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil || p.Status.Phase != corev1.PodRunning || p.Spec.NodeName == w1.Name {
				return false, nil
			}
			pod = p
			return true, nil
		}); err != nil {
			t.Fatalf("%s not running off %s after the drain: %v; %s", name, w1.Name, err, podsOn(ctx, ns))
		}
		where[pod.Spec.NodeName]++
		log := waitLogIn(t, ctx, logsOf(ws, pod.Spec.NodeName), ns, name, "sum=", 2*time.Minute)
		if !strings.Contains(log, "found=1") || sumIn(t, log) != want[name] {
			t.Fatalf("%s on %s after the drain: %s; want sum %s", name, pod.Spec.NodeName, log, want[name])
		}
	}
	vols, err := e.plinthVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if v.Spec.NodeName == w1.Name && strings.HasPrefix(v.Spec.Claim, ns+"/") {
			t.Errorf("volume %s of %s still on %s after the drain", v.Name, v.Spec.Claim, w1.Name)
		}
	}
	logf("nodes: drained %s of %d StatefulSets (20 MiB each, 3 moves at once) in %s; they run on %v", w1.Name, sets, took.Round(time.Millisecond), where)
	if err := e.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// moveClaim moves a StatefulSet's claim from w1 to w2 with kubectl plinth
// move --evict --wait, once for each kind of volume a move carries: a
// 1 GiB filesystem volume in a pool on xfs (the final sync from the extent
// maps), one on ext4 (snapshots are copies: the final sync compares bytes),
// a block volume (checked by the whole device's checksum) and a btrfs
// subvolume (btrfs send streams; before the move, a snapshot of it is
// restored on w2 too). The workers have no disks: a whole disk's move is
// tested on real loop devices in pkg/pool/whole (the chart's disk rules
// are one ConfigMap for every node, and the cluster's nodes share /dev).
func moveClaim(t *testing.T, ctx context.Context, ws []*cluster.Worker) {
	for _, c := range []moveCase{
		{name: "xfs", pool: "local", size: "1Gi", mib: 200},
		{name: "ext4", pool: "ext", size: "512Mi", mib: 100},
		{name: "block", pool: "local", size: "256Mi", mib: 64, block: true},
		{name: "btrfs", backend: "btrfs", pool: "btr", size: "100Mi", mib: 40},
	} {
		t.Run(c.name, func(t *testing.T) { moveOne(t, ctx, ws, c) })
	}
}

type moveCase struct {
	name, backend, pool, size string
	mib                       int
	block                     bool
}

func moveOne(t *testing.T, ctx context.Context, ws []*cluster.Worker, c moveCase) {
	w1, w2 := ws[0], ws[1]
	ns := namespace(t, ctx, "nodes-move-"+c.name)
	class := "plinth-move-" + c.name
	backend := c.backend
	if backend == "" {
		backend = "file"
	}
	storageClass(t, ctx, class, storagev1.VolumeBindingWaitForFirstConsumer, map[string]string{"backend": backend, "pool": c.pool}, w1.Name)
	ss := fillStatefulSet("mover", class, w1.Name, c.size, c.mib)
	if c.block {
		ss = blockStatefulSet("mover", class, w1.Name, c.size, c.mib)
	}
	if _, err := e.client.AppsV1().StatefulSets(ns).Create(ctx, ss, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := waitPodRunning(t, ctx, ns, "mover-0", 3*time.Minute)
	if pod.Spec.NodeName != w1.Name {
		t.Fatalf("mover-0 runs on %s, want %s", pod.Spec.NodeName, w1.Name)
	}
	want := sumIn(t, waitLogIn(t, ctx, podLogs(w1), ns, "mover-0", "sum=", 2*time.Minute))
	claim := "data-mover-0"
	before, oldPV := pvNode(t, ctx, ns, claim)
	if before != w1.Name {
		t.Fatalf("claim on %s, want %s", before, w1.Name)
	}
	oldVol := oldPV.Spec.CSI.VolumeHandle
	if backend == "btrfs" {
		restoreOnto(t, ctx, ns, claim, c, w1, w2, want)
	}

	start := time.Now()
	out := kubectlPlinth(t, "move", "-n", ns, claim, "--to", w2.Name, "--evict", "--wait")
	took := time.Since(start)
	logf("nodes: kubectl plinth move:\n%s", out)
	var m *v1alpha1.PlinthMove
	if m, _ = e.plinth.PlinthV1alpha1().PlinthMoves(ns).Get(ctx, claim, metav1.GetOptions{}); m == nil || m.Status.Phase != v1alpha1.MoveDone {
		t.Fatalf("move: %+v", m)
	}
	after, newPV := pvNode(t, ctx, ns, claim)
	if after != w2.Name || newPV.Name == oldPV.Name {
		t.Fatalf("after the move the claim is bound to PV %s on %s", newPV.Name, after)
	}
	pod = waitPodRunning(t, ctx, ns, "mover-0", 3*time.Minute)
	if pod.Spec.NodeName != w2.Name {
		t.Fatalf("after the move mover-0 runs on %s, want %s", pod.Spec.NodeName, w2.Name)
	}
	log := waitLogIn(t, ctx, podLogs(w2), ns, "mover-0", "sum=", 2*time.Minute)
	if !strings.Contains(log, "found=1") {
		t.Fatalf("the moved pod did not find its data: %s", log)
	}
	if got := sumIn(t, log); got != want {
		t.Fatalf("moved data: sum %s, want %s", got, want)
	}
	var downtime time.Duration
	if m.Status.CutoverTime != nil {
		downtime = pod.CreationTimestamp.Sub(m.Status.CutoverTime.Time)
		for _, c := range pod.Status.ContainerStatuses {
			if c.State.Running != nil {
				downtime = c.State.Running.StartedAt.Sub(m.Status.CutoverTime.Time)
			}
		}
	}
	// The source goes: its volume object, its PV, the move's snapshot.
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, verr := e.plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, oldVol, metav1.GetOptions{})
		_, perr := e.client.CoreV1().PersistentVolumes().Get(ctx, oldPV.Name, metav1.GetOptions{})
		_, serr := e.plinth.PlinthV1alpha1().PlinthSnapshots().Get(ctx, m.Status.SnapshotID, metav1.GetOptions{})
		return apierrors.IsNotFound(verr) && apierrors.IsNotFound(perr) && apierrors.IsNotFound(serr), nil
	}); err != nil {
		t.Fatalf("the source of the move is still there: %v", err)
	}
	logf("nodes: moved a StatefulSet's %s claim (%s, pool %s) holding %d MiB from %s to %s in %s (kubectl plinth move --evict --wait); from cutover to the pod running on %s: %s",
		c.size, c.name, c.pool, c.mib, w1.Name, w2.Name, took.Round(time.Millisecond), w2.Name, downtime.Round(time.Millisecond))
	if err := e.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// restoreOnto restores a snapshot of claim (on node from) onto node w (a
// btrfs send stream), checks the data and that from's transfer service
// refuses other nodes the restored volume's content (intruders), and
// deletes the restore again (the workers' btrfs pools are small).
func restoreOnto(t *testing.T, ctx context.Context, ns, claim string, c moveCase, from, w *cluster.Worker, want string) {
	t.Helper()
	sc := snaps(t)
	anywhere := "plinth-move-" + c.name + "-anywhere"
	storageClass(t, ctx, anywhere, storagev1.VolumeBindingWaitForFirstConsumer, map[string]string{"backend": c.backend, "pool": c.pool})
	takeSnapshot(t, ctx, sc, ns, "snap", claim)
	start := time.Now()
	claimAndPod(t, ctx, ns, fromSource(pvc("restored", anywhere, c.size, false), "snap", ""),
		pinned(appPod("reader", "restored", false, "sum", "/data/blob"), w.Name))
	if got := sumIn(t, waitLogIn(t, ctx, podLogs(w), ns, "reader", "sum=", 2*time.Minute)); got != want {
		t.Fatalf("restored on %s: sum %s, the source holds %s", w.Name, got, want)
	}
	took := time.Since(start)
	if node, _ := pvNode(t, ctx, ns, "restored"); node != w.Name {
		t.Fatalf("restored volume on %s, want %s", node, w.Name)
	}
	_, pv := pvNode(t, ctx, ns, "restored")
	intruders(t, ctx, from, w, pv.Spec.CSI.VolumeHandle)
	logf("nodes: restored a snapshot of a %s claim (%s, %d MiB) onto %s in %s (claim to pod running)", c.size, c.name, c.mib, w.Name, took.Round(time.Millisecond))
	if err := e.client.CoreV1().Pods(ns).Delete(ctx, "reader", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "restored", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := sc.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "snap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("the restored volume is still there: %v", err)
	}
}
