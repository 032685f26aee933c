package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/test/e2e/cluster"
)

// workerPool is one of a worker's pools: a loop filesystem of its own.
type workerPool struct {
	name, fs string
	size     int64
}

// The two workers beside the host's node. Their pools have the names of
// the host's (the chart's node arguments are the same on every node), its
// filesystems ("local" on xfs with reflinks, "small" and "ext" on ext4) and
// sizes chosen for the scenarios: w1's three file pools together hold more
// than w2's "local", but none of them alone holds 1.5 GiB (w1's "local"
// holds a 1 GiB volume, for the move of one).
var workerSpecs = []struct {
	name  string
	pools []workerPool
}{
	{"plinth-e2e-w1", []workerPool{{"local", "xfs", 1400 << 20}, {"small", "ext4", 1 << 30}, {"ext", "ext4", 1 << 30}, {"btr", "btrfs", 256 << 20}}},
	{"plinth-e2e-w2", []workerPool{{"local", "xfs", 3 << 30}, {"small", "ext4", 160 << 20}, {"ext", "ext4", 640 << 20}, {"btr", "btrfs", 256 << 20}}},
}

// TestZNodes runs last (after the chart install, whose plinth it uses):
// two more nodes join the cluster, each a kubelet and a containerd in
// network and mount namespaces of their own (test/e2e/cluster.Worker), and
// the chart's DaemonSet runs plinth node on each with its own pools. Each
// node's plinth writes only its own node's objects (node-scoped-writes).
func TestZNodes(t *testing.T) {
	need(t)
	defer timed(t, "three nodes")()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	var ws []*cluster.Worker
	for i, s := range workerSpecs {
		w := e.addWorker(t, ctx, s.name, i+1, s.pools)
		ws = append(ws, w)
	}
	t.Cleanup(func() {
		for _, w := range ws {
			w.Remove()
			_ = e.client.CoreV1().Nodes().Delete(context.Background(), w.Name, metav1.DeleteOptions{})
		}
	})
	start := time.Now()
	for _, w := range ws {
		e.waitPlinthOn(t, ctx, w.Name, 4)
	}
	logf("nodes: plinth node serves on both workers %s after their kubelets were Ready", time.Since(start).Round(time.Millisecond))
	idleAPIWrites(t, ctx)
	logf("nodes: kubectl plinth nodes:\n%s", kubectlPlinth(t, "nodes"))

	t.Run("node-scoped-writes", func(t *testing.T) { nodeScopedWrites(t, ctx, ws) })
	t.Run("cross-node-restore-clone", func(t *testing.T) { crossNodeCopies(t, ctx, ws) })
	t.Run("move-claim", func(t *testing.T) { moveClaim(t, ctx, ws) })
	t.Run("drain", func(t *testing.T) { drainNode(t, ctx, ws) })
	t.Run("move-kills", func(t *testing.T) { moveKills(t, ctx, ws) })
	t.Run("immediate-allowed-topologies", func(t *testing.T) { immediateAcrossNodes(t, ctx, ws) })
	t.Run("outside-fill-and-spread", func(t *testing.T) { fillAndSpread(t, ctx, ws) })
	t.Run("controller-failover", func(t *testing.T) { controllerFailover(t, ctx, ws) })
	t.Run("node-loss", func(t *testing.T) { nodeLoss(t, ctx, lossTarget(t, ctx, ws)) })
}

// addWorker makes a worker whose plinth host directory (hostRoot inside
// it) is a directory of its own with its pools mounted, and starts it.
func (e *env) addWorker(t *testing.T, ctx context.Context, name string, index int, pools []workerPool) *cluster.Worker {
	t.Helper()
	dir := filepath.Join(e.c.Dir, "nodes", name, "plinth-e2e")
	for _, d := range []string{"devices/sys", "devices/dev", "devices/proc", "cdi", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range pools {
		if err := os.MkdirAll(filepath.Join(dir, "pools", p.name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The kustomize install names a disk-rules file; a worker has no rules.
	if err := os.WriteFile(filepath.Join(dir, "disks.yaml"), []byte("rules: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := e.c.NewWorker(ctx, name, index, map[string]string{dir: hostRoot})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		img := filepath.Join(w.Dir, p.name+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, p.size); err != nil {
			t.Fatal(err)
		}
		dev, err := run(ctx, "losetup", "-f", "--show", img)
		if err != nil {
			t.Fatal(err)
		}
		mkfs := []string{"-q", "-F", "-m", "0"}
		switch p.fs {
		case "btrfs":
			mkfs = []string{"-q", "-f"}
		case "xfs":
			mkfs = []string{"-q", "-f", "-m", "reflink=1"}
		}
		if _, err := run(ctx, "mkfs."+p.fs, append(mkfs, dev)...); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Exec(ctx, "mount", dev, filepath.Join(hostRoot, "pools", p.name)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	logf("nodes: %s (%s) Ready %s after its containerd started", name, w.IP, time.Since(start).Round(time.Millisecond))
	return w
}

// waitPlinthOn waits until plinth is registered on node (CSINode) and its
// PlinthNode has pools healthy pools.
func (e *env) waitPlinthOn(t *testing.T, ctx context.Context, node string, pools int) {
	t.Helper()
	var last string
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		csn, err := e.client.StorageV1().CSINodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		registered := false
		for _, d := range csn.Spec.Drivers {
			registered = registered || (d.Name == driver && slices.Contains(d.TopologyKeys, topologyKey))
		}
		pn, err := e.plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		healthy := 0
		for _, p := range pn.Status.Pools {
			if p.Healthy {
				healthy++
			}
		}
		last = fmt.Sprintf("registered %v, %d healthy pools of %d", registered, healthy, len(pn.Status.Pools))
		return registered && healthy == pools, nil
	}); err != nil {
		t.Fatalf("plinth on %s: %v (%s); plinth pods: %s", node, err, last, podsOn(ctx, "plinth-system"))
	}
}

// podsOn lists a namespace's pods with their node and phase.
func podsOn(ctx context.Context, ns string) string {
	l, err := e.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range l.Items {
		fmt.Fprintf(&b, "\n  %s on %q: %s", p.Name, p.Spec.NodeName, p.Status.Phase)
		for _, cs := range p.Status.ContainerStatuses {
			fmt.Fprintf(&b, " (restarts %d)", cs.RestartCount)
		}
	}
	return b.String()
}

// storageClass makes a StorageClass (removed when the test ends).
func storageClass(t *testing.T, ctx context.Context, name string, mode storagev1.VolumeBindingMode, params map[string]string, nodes ...string) {
	t.Helper()
	del := corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: driver,
		VolumeBindingMode: &mode, ReclaimPolicy: &del, Parameters: params}
	if len(nodes) > 0 {
		sc.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{{Key: topologyKey, Values: nodes}}}}
	}
	if _, err := e.client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.client.StorageV1().StorageClasses().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// pvNode is the node a bound claim's volume is on (its PV's node affinity)
// and its PV.
func pvNode(t *testing.T, ctx context.Context, ns, claim string) (string, *corev1.PersistentVolume) {
	t.Helper()
	c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pv, err := e.client.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("PV of %s/%s: %v", ns, claim, err)
	}
	return pv.Spec.CSI.VolumeAttributes["plinth.example.com/node"], pv
}

func waitBound(t *testing.T, ctx context.Context, ns, claim string, timeout time.Duration) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		return err == nil && c.Status.Phase == corev1.ClaimBound, nil
	}); err != nil {
		t.Fatalf("%s/%s not Bound: %v; events: %s", ns, claim, err, events(ctx, ns))
	}
}

// Scenario 2: Immediate binding with allowedTopologies over both workers,
// no pool named: w1's pools together hold more than w2's "local", but only
// w2's "local" holds the volume by itself, so it lands there. A claim no
// single pool holds stays Pending and says why.
func immediateAcrossNodes(t *testing.T, ctx context.Context, ws []*cluster.Worker) {
	ns := namespace(t, ctx, "nodes-immediate")
	defer deleteClaims(t, ctx, ns)
	storageClass(t, ctx, "plinth-workers-immediate", storagev1.VolumeBindingImmediate, nil, ws[0].Name, ws[1].Name)
	if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc("big", "plinth-workers-immediate", "1536Mi", false), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitBound(t, ctx, ns, "big", time.Minute)
	node, pv := pvNode(t, ctx, ns, "big")
	if pool := pv.Spec.CSI.VolumeAttributes["plinth.example.com/pool"]; node != ws[1].Name || pool != "local" {
		t.Errorf("1.5Gi volume on node %s pool %s; want %s pool local, the only pool that holds it by itself", node, pool, ws[1].Name)
	}
	if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc("too-big", "plinth-workers-immediate", "3Gi", false), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var why string
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := e.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=too-big,reason=ProvisioningFailed"})
		if err != nil || len(l.Items) == 0 {
			return false, nil
		}
		why = l.Items[0].Message
		return true, nil
	}); err != nil {
		t.Fatalf("no ProvisioningFailed on a claim no pool holds: %v; events: %s", err, events(ctx, ns))
	}
	if !strings.Contains(why, "no single pool") || !strings.Contains(why, ws[0].Name) || !strings.Contains(why, ws[1].Name) {
		t.Errorf("ProvisioningFailed %q: want it to say no single pool holds it and name both nodes", why)
	}
	c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "too-big", metav1.GetOptions{})
	if err != nil || c.Status.Phase != corev1.ClaimPending {
		t.Errorf("too-big: %v %v, want Pending", c.Status.Phase, err)
	}
	logf("nodes: Immediate over two nodes: 1.5Gi on %s/local; 3Gi refused: %s", node, why)
}

// capacity is the CSIStorageCapacity of a class on a node (-1: none).
func capacity(ctx context.Context, class, node string) int64 {
	l, err := e.client.StorageV1().CSIStorageCapacities("plinth-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		return -1
	}
	for _, c := range l.Items {
		if c.StorageClassName != class || c.NodeTopology == nil || c.NodeTopology.MatchLabels[topologyKey] != node {
			continue
		}
		if c.MaximumVolumeSize != nil {
			return c.MaximumVolumeSize.Value()
		}
		if c.Capacity != nil {
			return c.Capacity.Value()
		}
	}
	return -1
}

// Scenarios 5 and 1: w1's "local" filesystem is filled from outside
// plinth; CSIStorageCapacity says so within seconds and only for w1. Then
// a burst of WaitForFirstConsumer pods spread over the nodes: each gets its
// volume on its own node and none is scheduled onto the full one.
func fillAndSpread(t *testing.T, ctx context.Context, ws []*cluster.Worker) {
	const class = "plinth-local"
	full := ws[0]
	other := capacity(ctx, class, ws[1].Name)
	poolDir := filepath.Join(full.Root(), hostRoot, "pools", "local")
	var st syscall.Statfs_t
	if err := syscall.Statfs(poolDir, &st); err != nil {
		t.Fatal(err)
	}
	fill := int64(st.Bavail)*st.Bsize - 40<<20
	f, err := os.Create(filepath.Join(poolDir, "outside.fill"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, fill); err != nil {
		f.Close()
		t.Fatal(err)
	}
	f.Close()
	defer os.Remove(filepath.Join(poolDir, "outside.fill"))
	var seen int64
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		seen = capacity(ctx, class, full.Name)
		return seen >= 0 && seen < 64<<20, nil
	}); err != nil {
		t.Fatalf("CSIStorageCapacity of %s on %s after %d MiB were taken from outside: %d", class, full.Name, fill>>20, seen)
	}
	took := time.Since(start)
	if now := capacity(ctx, class, ws[1].Name); now < other-(16<<20) {
		t.Errorf("%s's capacity fell from %d to %d when only %s was filled", ws[1].Name, other, now, full.Name)
	}
	logf("nodes: %d MiB taken from outside %s's pool local: CSIStorageCapacity down to %d MiB after %s", fill>>20, full.Name, seen>>20, took.Round(time.Millisecond))

	ns := namespace(t, ctx, "nodes-spread")
	defer deleteClaims(t, ctx, ns)
	const n = 9
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("s%d", i)
			if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc(name, class, "128Mi", false), metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			p := appPod(name, name, false, "pause")
			p.Labels = map[string]string{"app": "spread"}
			p.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
				WhenUnsatisfiable: corev1.ScheduleAnyway, LabelSelector: &metav1.LabelSelector{MatchLabels: p.Labels}}}
			if _, err := e.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	perNode := map[string]int{}
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		pod := waitPodRunning(t, ctx, ns, name, 3*time.Minute)
		node, _ := pvNode(t, ctx, ns, name)
		if node != pod.Spec.NodeName {
			t.Errorf("pod %s runs on %s, its volume is on %s", name, pod.Spec.NodeName, node)
		}
		if node == full.Name {
			t.Errorf("pod %s's volume is on %s, whose pool has no room", name, node)
		}
		perNode[node]++
	}
	logf("nodes: %d WaitForFirstConsumer pods spread: %v (none on the full %s)", n, perNode, full.Name)
	for i := range n {
		deletePod(t, ctx, ns, fmt.Sprintf("s%d", i))
	}
	if err := os.Remove(filepath.Join(poolDir, "outside.fill")); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		seen = capacity(ctx, class, full.Name)
		return seen > 512<<20, nil
	}); err != nil {
		t.Errorf("capacity of %s on %s after the outside file was removed: %d", class, full.Name, seen)
	}
}

// Scenario 3: two controller replicas; the leader is killed (SIGKILL)
// while a burst of claims is being provisioned; the other takes over and
// every claim is bound exactly once.
// stopKubeletOf stops the kubelet of node (the host's or a worker's) and
// returns what starts it again.
func stopKubeletOf(t *testing.T, ws []*cluster.Worker, node string) func() {
	t.Helper()
	start := func(f func(context.Context) error) func() {
		return func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := f(ctx); err != nil {
				t.Errorf("kubelet of %s back: %v", node, err)
			}
		}
	}
	for _, w := range ws {
		if w.Name == node {
			w.StopKubelet()
			return start(w.StartKubelet)
		}
	}
	e.c.StopKubelet()
	return start(e.c.StartKubelet)
}

// scaleController sets plinth controller's replicas and waits until all
// are ready.
func scaleController(t *testing.T, ctx context.Context, n int32) {
	t.Helper()
	deps := e.client.AppsV1().Deployments("plinth-system")
	if _, err := deps.Patch(ctx, "plinth-controller", types.MergePatchType, []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := deps.Get(ctx, "plinth-controller", metav1.GetOptions{})
		return err == nil && d.Status.ReadyReplicas == n && d.Status.Replicas == n, nil
	}); err != nil {
		t.Fatalf("controller not at %d replicas: %v; pods: %s", n, err, podsOn(ctx, "plinth-system"))
	}
}

func controllerFailover(t *testing.T, ctx context.Context, ws []*cluster.Worker) {
	scale := func(n int32) { t.Helper(); scaleController(t, ctx, n) }
	scale(2)
	defer scale(1)
	pods := controllerPods(t, ctx)
	if len(pods) != 2 {
		t.Fatalf("%d controller pods, want 2: %s", len(pods), podsOn(ctx, "plinth-system"))
	}
	leader, lease, holder := leaderPod(t, ctx, pods)
	logf("nodes: controller pods %s on %s and %s on %s; leader %s (Lease %s)", pods[0].Name, pods[0].Spec.NodeName, pods[1].Name, pods[1].Spec.NodeName, leader.Name, lease)

	ns := namespace(t, ctx, "nodes-failover")
	defer deleteClaims(t, ctx, ns)
	const n = 40
	done := make(chan struct{})
	var bound, pvMade []time.Duration
	go func() {
		defer close(done)
		bound, pvMade = createClaimsPV(t, ctx, ns, "f", n, "plinth-local-immediate", "16Mi", n, 3*time.Minute)
	}()
	time.Sleep(500 * time.Millisecond)
	// The leader's node stops restarting containers (its kubelet is
	// stopped, as when a node dies), then the leader is killed: only the
	// standby can take over.
	restart := stopKubeletOf(t, ws, leader.Spec.NodeName)
	killed := time.Now()
	if !killPod(t, leader, "controller") {
		restart()
		t.Fatalf("no plinth controller process of pod %s found", leader.Name)
	}
	var next string
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := e.client.CoordinationV1().Leases("plinth-system").Get(ctx, lease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return false, nil
		}
		next = *l.Spec.HolderIdentity
		return next != holder, nil
	}); err != nil {
		t.Fatalf("no other process took the Lease after the leader %s was killed: %v", holder, err)
	}
	took := time.Since(killed)
	restart()
	who := "the standby replica"
	if strings.HasPrefix(next, leader.Name+"_") {
		who = "the killed pod's restarted container"
		t.Errorf("the killed leader's pod %s took the Lease again (%s) while its kubelet was stopped", leader.Name, next)
	}
	<-done
	if t.Failed() {
		return
	}
	// Every claim bound once: one PV each, one volume object per PV.
	pvs, err := e.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	handles := map[string]string{}
	for _, pv := range pvs.Items {
		if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == ns {
			if other, dup := handles[pv.Spec.CSI.VolumeHandle]; dup {
				t.Errorf("volume %s behind PVs %s and %s", pv.Spec.CSI.VolumeHandle, other, pv.Name)
			}
			handles[pv.Spec.CSI.VolumeHandle] = pv.Name
		}
	}
	vols, err := e.plinthVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	objs := 0
	for _, v := range vols {
		if strings.HasPrefix(v.Spec.Claim, ns+"/") {
			objs++
			if _, ok := handles[v.Name]; !ok {
				t.Errorf("volume object %s (claim %s) has no PV", v.Name, v.Spec.Claim)
			}
		}
	}
	if len(handles) != n || objs != n {
		t.Errorf("%d claims: %d PVs, %d volume objects", n, len(handles), objs)
	}
	logf("nodes: leader %s killed mid-burst; %s (%s) took the Lease %s later (lease duration 6s); %d claims bound once each, PV made p50 %s max %s, Bound max %s",
		holder, next, who, took.Round(time.Millisecond), n, pvMade[len(pvMade)/2].Round(time.Millisecond), pvMade[len(pvMade)-1].Round(time.Millisecond), bound[len(bound)-1].Round(time.Millisecond))
}

func controllerPods(t *testing.T, ctx context.Context) []corev1.Pod {
	t.Helper()
	l, err := e.client.CoreV1().Pods("plinth-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// leaderPod waits until one of pods holds the controller's Lease: the pod,
// the Lease and the holder's identity.
func leaderPod(t *testing.T, ctx context.Context, pods []corev1.Pod) (corev1.Pod, string, string) {
	t.Helper()
	var leader corev1.Pod
	var lease, holder string
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := e.client.CoordinationV1().Leases("plinth-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, le := range l.Items {
			if !strings.HasPrefix(le.Name, "plinth-controller") || le.Spec.HolderIdentity == nil {
				continue
			}
			for _, p := range pods {
				if strings.HasPrefix(*le.Spec.HolderIdentity, p.Name+"_") {
					leader, lease, holder = p, le.Name, *le.Spec.HolderIdentity
					return true, nil
				}
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("no controller pod holds the Lease: %v", err)
	}
	return leader, lease, holder
}

// killPod sends SIGKILL to the "plinth <role>" process of pod (found by the
// pod's UID in its cgroup path).
func killPod(t *testing.T, pod corev1.Pod, role string) bool {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) < 2 || !strings.HasSuffix(args[0], "/plinth") || args[1] != role {
			continue
		}
		cg, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cgroup"))
		if !strings.Contains(string(cg), "pod"+string(pod.UID)) {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(ent.Name(), &pid); err == nil && syscall.Kill(pid, syscall.SIGKILL) == nil {
			return true
		}
	}
	return false
}

// statefulSet is a one-replica StatefulSet of e2e-app with one claim
// template, preferring node.
func statefulSet(name, class, node string) *appsv1.StatefulSet {
	one := int32(1)
	labels := map[string]string{"app": name}
	pod := appPod("", "", false, "pause")
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{
		Weight: 100, Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}},
	}}}}
	claim := pvc("data", class, "64Mi", false)
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &one, ServiceName: name, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template:             corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod.Spec},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{*claim},
		},
	}
}

// Scenario 4: a node is lost. A StatefulSet's pod runs on w2 with its
// volume there; w2's kubelet, containers and containerd stop and its Node
// object is deleted. With release off (the default) the PV and PVC are
// kept and reported (events, kubectl plinth) and the recreated pod waits.
// With --release-volumes-on-lost-node-after the PVC is released once the
// node has been gone that long, the StatefulSet's pod starts on another
// node with a new volume, and the old PV goes while its volume object
// stays as a tombstone. When w2 comes back its plinth removes the storage
// of that tombstone, and only that.
func nodeLoss(t *testing.T, ctx context.Context, w *cluster.Worker) {
	ns := namespace(t, ctx, "nodes-loss")
	sts := e.client.AppsV1().StatefulSets(ns)
	if _, err := sts.Create(ctx, statefulSet("db", "plinth-local", w.Name), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if stopped { // a failure left the node off: its volumes go only with it
			if err := w.Start(ctx); err != nil {
				t.Errorf("%s back: %v", w.Name, err)
			}
		}
		_ = sts.Delete(context.Background(), "db", metav1.DeleteOptions{})
		deleteClaims(t, ctx, ns)
	}()
	pod := waitPodRunning(t, ctx, ns, "db-0", 3*time.Minute)
	node, oldPV := pvNode(t, ctx, ns, "data-db-0")
	if pod.Spec.NodeName != w.Name || node != w.Name {
		t.Fatalf("db-0 on %s with its volume on %s; want both on %s", pod.Spec.NodeName, node, w.Name)
	}
	oldID := oldPV.Spec.CSI.VolumeHandle
	// The volume's image on w2, to see it go when w2 is back.
	images := imagesIn(t, filepath.Join(w.Root(), hostRoot, "pools", "local"))
	if len(images) != 1 {
		t.Fatalf("images in %s's pool local: %v, want db-0's", w.Name, images)
	}

	lost := time.Now()
	w.Stop()
	stopped = true
	if err := e.client.CoreV1().Nodes().Delete(ctx, w.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Reported, never deleted.
	onLost := func(obj string) string {
		l, err := e.client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "reason=VolumeOnLostNode,involvedObject.name=" + obj})
		if err != nil || len(l.Items) == 0 {
			return ""
		}
		return l.Items[0].Message
	}
	var msg string
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		msg = onLost(oldPV.Name)
		return msg != "", nil
	}); err != nil {
		t.Fatalf("no VolumeOnLostNode event on PV %s after %s was deleted; events: %s", oldPV.Name, w.Name, events(ctx, ns))
	}
	logf("nodes: %s lost; %s later the PV says: %s", w.Name, time.Since(lost).Round(time.Millisecond), msg)
	out := kubectlPlinth(t, "volumes")
	if !strings.Contains(out, "LOST") {
		t.Errorf("kubectl plinth volumes does not mark the volume on the lost node:\n%s", out)
	}
	logf("nodes: kubectl plinth volumes:\n%s", out)
	// Release is off: the claim stays bound to the old volume, whatever
	// happens to the pod (the pod garbage collector deletes it with its
	// node; the StatefulSet makes it again, and it waits).
	time.Sleep(15 * time.Second)
	c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data-db-0", metav1.GetOptions{})
	if err != nil || c.DeletionTimestamp != nil || c.Spec.VolumeName != oldPV.Name {
		t.Fatalf("release off: claim data-db-0 %v (deleting %v, volume %s), want it kept on %s", err, c.DeletionTimestamp, c.Spec.VolumeName, oldPV.Name)
	}
	if _, err := e.client.CoreV1().PersistentVolumes().Get(ctx, oldPV.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("release off: PV %s: %v", oldPV.Name, err)
	}

	// Opt in.
	const after = 30 * time.Second
	restore := controllerArgs(t, ctx, "--release-volumes-on-lost-node-after="+after.String())
	defer restore()
	optIn := time.Now()
	var newNode string
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 4*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := e.client.CoreV1().Pods(ns).Get(ctx, "db-0", metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data-db-0", metav1.GetOptions{})
		if err != nil || c.Spec.VolumeName == "" || c.Spec.VolumeName == oldPV.Name {
			return false, nil
		}
		newNode = p.Spec.NodeName
		return true, nil
	}); err != nil {
		t.Fatalf("release on: db-0 not running elsewhere with a new volume: %v; pods: %s; events: %s", err, podsOn(ctx, ns), events(ctx, ns))
	}
	logf("nodes: release on (%s): db-0 running on %s with a new volume %s after the controller was restarted with it (node gone %s)",
		after, newNode, time.Since(optIn).Round(time.Second), time.Since(lost).Round(time.Second))
	if newNode == w.Name {
		t.Errorf("db-0 back on the lost node %s", w.Name)
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.client.CoreV1().PersistentVolumes().Get(ctx, oldPV.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Errorf("the released PV %s is still there: %v", oldPV.Name, err)
	}
	v, err := e.plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, oldID, metav1.GetOptions{})
	if err != nil || v.DeletionTimestamp == nil || len(v.Finalizers) == 0 {
		t.Fatalf("the released volume's object %s: %v; want it kept, being deleted, with the node's finalizer", oldID, err)
	}

	// The node comes back: its plinth removes the released volume's
	// storage, then the object goes.
	back := time.Now()
	stopped = false
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, oldID, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("%s is back but the released volume %s's object is still there: %v; plinth pods: %s", w.Name, oldID, err, podsOn(ctx, "plinth-system"))
	}
	if left := imagesIn(t, filepath.Join(w.Root(), hostRoot, "pools", "local")); len(left) != 0 {
		t.Errorf("images left in %s's pool local after it came back: %v", w.Name, left)
	}
	logf("nodes: %s back: the released volume's storage removed %s after its kubelet started", w.Name, time.Since(back).Round(time.Millisecond))
}

// lossTarget is the worker the node-loss scenario loses: one that runs no
// plinth controller (with the one replica the chart runs here, losing its
// node would leave no controller until the pod is made again elsewhere,
// which is Kubernetes' pod garbage collection, not plinth).
func lossTarget(t *testing.T, ctx context.Context, ws []*cluster.Worker) *cluster.Worker {
	t.Helper()
	busy := map[string]bool{}
	for _, p := range controllerPods(t, ctx) {
		busy[p.Spec.NodeName] = true
	}
	for i := len(ws) - 1; i >= 0; i-- {
		if !busy[ws[i].Name] {
			return ws[i]
		}
	}
	return ws[len(ws)-1]
}

// controllerArgs adds args to the controller Deployment's container and
// waits for the rollout; the returned func restores the old arguments.
func controllerArgs(t *testing.T, ctx context.Context, args ...string) func() {
	t.Helper()
	deps := e.client.AppsV1().Deployments("plinth-system")
	set := func(ctx context.Context, f func([]string) []string) {
		d, err := deps.Get(ctx, "plinth-controller", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Spec.Template.Spec.Containers[0].Args = f(d.Spec.Template.Spec.Containers[0].Args)
		d, err = deps.Update(ctx, d, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		gen := d.Generation
		if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			d, err := deps.Get(ctx, "plinth-controller", metav1.GetOptions{})
			return err == nil && d.Status.ObservedGeneration >= gen && d.Status.UpdatedReplicas == *d.Spec.Replicas &&
				d.Status.ReadyReplicas == *d.Spec.Replicas && d.Status.Replicas == *d.Spec.Replicas, nil
		}); err != nil {
			t.Fatalf("controller rollout: %v; pods: %s", err, podsOn(ctx, "plinth-system"))
		}
	}
	var old []string
	set(ctx, func(a []string) []string { old = append([]string(nil), a...); return append(a, args...) })
	return func() { set(context.Background(), func([]string) []string { return old }) }
}

// idleAPIWrites reads what the host node's idle plinth node agent asks of
// the API server in a minute in which nothing happens on its node
// (plinth_api_requests_total): it writes only its heartbeat (the
// PlinthNode status, every 30 s) and what changed.
func idleAPIWrites(t *testing.T, ctx context.Context) {
	t.Helper()
	before := apiRequests(ctx)
	if before == nil {
		t.Log("plinth_api_requests_total: the host's node agent serves no metrics here")
		return
	}
	const window = time.Minute
	time.Sleep(window)
	after := apiRequests(ctx)
	var writes, reads float64
	var what []string
	for k, v := range after {
		d := v - before[k]
		if d <= 0 {
			continue
		}
		verb, _, _ := strings.Cut(k, " ")
		switch verb {
		case "create", "update", "patch", "delete", "deletecollection":
			writes += d
		case "watch":
			continue // long-lived: a reconnect, not a request per change
		default:
			reads += d
		}
		what = append(what, fmt.Sprintf("%s: %.0f", k, d))
	}
	sort.Strings(what)
	logf("nodes: the host's idle plinth node agent in %s: %.0f writes, %.0f reads of the API server (%s)", window, writes, reads, strings.Join(what, ", "))
	if writes > 6 {
		t.Errorf("an idle node agent wrote %.0f times in %s (its heartbeat is every 30 s): %s", writes, window, strings.Join(what, ", "))
	}
}

// apiRequests reads the host's plinth node agent's
// plinth_api_requests_total, by "verb resource code" (nil: no metrics).
func apiRequests(ctx context.Context) map[string]float64 {
	return apiRequestsAt(ctx, "http://127.0.0.1:9809/metrics")
}

// apiRequestsAt reads plinth_api_requests_total from a plinth process's
// metrics at url.
func apiRequestsAt(ctx context.Context, url string) map[string]float64 {
	b := fetchMetrics(ctx, url)
	if b == nil {
		return nil
	}
	return sumMetric(b, "plinth_api_requests_total", "verb", "resource", "code")
}

// fetchMetrics reads a Prometheus text page (nil if it cannot).
func fetchMetrics(ctx context.Context, url string) []byte {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil
	}
	return b
}

// sumMetric sums metric's samples in a Prometheus text page by the values
// of keys, joined with spaces (an absent label counts as "").
func sumMetric(page []byte, metric string, keys ...string) map[string]float64 {
	out := map[string]float64{}
	for _, l := range strings.Split(string(page), "\n") {
		rest, ok := strings.CutPrefix(l, metric+"{")
		if !ok {
			continue
		}
		labels, val, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		got := map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			k, v, _ := strings.Cut(kv, "=")
			got[k] = strings.Trim(v, `"`)
		}
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = got[k]
		}
		out[strings.Join(parts, " ")] += f
	}
	return out
}
