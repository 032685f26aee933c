package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
)

// TestInstalled: plinth is installed from deploy/ and registered: the CSINode
// carries the driver, the node advertises the fixture's 8 GPUs, and the
// PlinthNode lists the seven pools (four declared, three made by disk rules).
func TestInstalled(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.waitPlinth(ctx); err != nil {
		t.Fatal(err)
	}
	csn, err := e.client.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The volume limit: the node has file pools (bounded by bytes), so
	// half the kernel's mount limit; the kubelet refreshes it every
	// nodeAllocatableUpdatePeriodSeconds, which the API server keeps.
	wantLimit := int32(50000)
	if b, err := os.ReadFile("/proc/sys/fs/mount-max"); err == nil {
		if m, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			wantLimit = int32(m / 2)
		}
	}
	for _, d := range csn.Spec.Drivers {
		if d.Name == driver && (len(d.TopologyKeys) != 1 || d.TopologyKeys[0] != "topology.plinth.example.com/node" || d.NodeID != nodeName) {
			t.Errorf("CSINode driver entry %+v: want node ID %s and topology key topology.plinth.example.com/node", d, nodeName)
		}
		if d.Name == driver && (d.Allocatable == nil || d.Allocatable.Count == nil || *d.Allocatable.Count != wantLimit) {
			t.Errorf("CSINode driver entry's allocatable %+v: want a count of %d volumes", d.Allocatable, wantLimit)
		}
	}
	cd, err := e.client.StorageV1().CSIDrivers().Get(ctx, driver, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := cd.Spec.NodeAllocatableUpdatePeriodSeconds; p == nil || *p != 60 {
		t.Errorf("CSIDriver nodeAllocatableUpdatePeriodSeconds = %v; want 60", p)
	}
}

func timed(t *testing.T, name string) func() {
	start := time.Now()
	return func() { logf("%s: %s", name, time.Since(start).Round(time.Millisecond)) }
}

// Scenario 1: WaitForFirstConsumer filesystem volume: write, re-mount,
// expand online, delete.
func TestFilesystemLifecycle(t *testing.T) {
	need(t)
	defer timed(t, "scenario 1 (filesystem lifecycle)")()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "s1")
	claimAndPod(t, ctx, ns, pvc("data", "plinth-local", "512Mi", false), appPod("writer", "data", false, "write", "/data/hello", "plinth-was-here"))
	waitLog(t, ctx, ns, "writer", "content=plinth-was-here", time.Minute)
	claim, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pvName := claim.Spec.VolumeName
	pv, err := e.client.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driver || pv.Spec.CSI.FSType != "xfs" || pv.Spec.NodeAffinity == nil {
		t.Fatalf("PV %s: want a plinth CSI xfs volume with node affinity, got %+v", pvName, pv.Spec)
	}
	if got := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values; len(got) != 1 || got[0] != nodeName {
		t.Errorf("PV node affinity %v, want [%s]", got, nodeName)
	}

	// The data outlives the pod.
	deletePod(t, ctx, ns, "writer")
	if _, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("reader", "data", false, "write", "/data/hello", "overwritten"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodRunning(t, ctx, ns, "reader", 2*time.Minute)
	waitLog(t, ctx, ns, "reader", "found=plinth-was-here", time.Minute)
	deletePod(t, ctx, ns, "reader")

	// Online expansion: the pod watches its filesystem's size.
	if _, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("sizer", "data", false, "fs", "/data"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodRunning(t, ctx, ns, "sizer", 2*time.Minute)
	before := lastSize(waitLog(t, ctx, ns, "sizer", "size=", time.Minute))
	claim, err = e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claim.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("1Gi")
	expandStart := time.Now()
	if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Update(ctx, claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		q := c.Status.Capacity[corev1.ResourceStorage]
		return q.Value() >= 1<<30, nil
	}); err != nil {
		t.Fatalf("PVC capacity did not reach 1Gi: %v; events: %s", err, events(ctx, ns))
	}
	var after int64
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		after = lastSize(waitLog(t, ctx, ns, "sizer", "size=", time.Minute))
		return after > before+(400<<20), nil
	}); err != nil {
		t.Fatalf("the pod's filesystem stayed at %d bytes (was %d) after expansion to 1Gi", after, before)
	}
	logf("scenario 1: online expansion 512Mi -> 1Gi seen by the pod in %s (fs %d -> %d bytes)", time.Since(expandStart).Round(time.Millisecond), before, after)
	deletePod(t, ctx, ns, "sizer")

	// Delete: the storage leaves the node.
	img := filepath.Join(hostRoot, "pools/local")
	if err := e.client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitVolumeGone(t, ctx, pvName)
	if left := imagesIn(t, img); len(left) != 0 {
		t.Errorf("pool local still holds %v after the PVC was deleted", left)
	}
}

func lastSize(log string) int64 {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(lines[i], "size="); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// imagesIn lists the volume files of a file pool (anything but records).
func imagesIn(t *testing.T, poolDir string) []string {
	t.Helper()
	var out []string
	_ = filepath.Walk(poolDir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.HasSuffix(p, ".img") {
			out = append(out, strings.TrimPrefix(p, poolDir+"/"))
		}
		return nil
	})
	return out
}

// Scenario 2: a raw block volume consumed as a device.
func TestBlockVolume(t *testing.T) {
	need(t)
	defer timed(t, "scenario 2 (block volume)")()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "s2")
	claimAndPod(t, ctx, ns, pvc("raw", "plinth-local", "64Mi", true), appPod("raw", "raw", true, "block", "/dev/xvda"))
	log := waitLog(t, ctx, ns, "raw", "roundtrip=", time.Minute)
	if !strings.Contains(log, "blockdev=true size=67108864 roundtrip=true") {
		t.Fatalf("block device check: %s", log)
	}
	deletePod(t, ctx, ns, "raw")
	claim, _ := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "raw", metav1.GetOptions{})
	if err := e.client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "raw", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitVolumeGone(t, ctx, claim.Spec.VolumeName)
}

// Scenario 3: a btrfs-backed StorageClass (subvolume with a qgroup limit).
// The pod keeps running for scenario 6 (kubelet restart).
func TestBtrfsVolume(t *testing.T) {
	need(t)
	defer timed(t, "scenario 3 (btrfs volume)")()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "s3")
	claimAndPod(t, ctx, ns, pvc("sub", "plinth-btrfs", "128Mi", false), appPod("btr", "sub", false, "write", "/data/hello", "on-btrfs"))
	waitLog(t, ctx, ns, "btr", "content=on-btrfs", time.Minute)
	vols, err := e.plinthVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range vols {
		if v.Spec.Claim == ns+"/sub" {
			found = v.Spec.Pool == "btr" && v.Status.Phase == v1alpha1.VolumeReady
		}
	}
	if !found {
		t.Fatalf("no Ready PlinthVolume in pool btr for %s/sub: %+v", ns, vols)
	}
}

// Scenario 4: 50 PVCs at once against a pool that fits 40.
func TestNoOvercommit(t *testing.T) {
	need(t)
	defer timed(t, "scenario 4 (50 PVCs, room for 40)")()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "s4")
	p, err := e.pool(ctx, "small")
	if err != nil {
		t.Fatal(err)
	}
	// Each volume a little over 1/40.5 of what the pool can give: 40 fit, 41 do not.
	size := (p.AllocatableBytes * 2 / 81) &^ 4095
	logf("scenario 4: pool small allocatable %d bytes, 50 PVCs of %d bytes", p.AllocatableBytes, size)
	start := time.Now()
	bound := createClaims(t, ctx, ns, "c", 50, "plinth-small", strconv.FormatInt(size, 10), 40, 2*time.Minute)
	logf("scenario 4: 40 PVCs Bound in %s", time.Since(start).Round(time.Millisecond))
	// Let provisioning retries run; nothing more may bind.
	time.Sleep(10 * time.Second)
	l, err := e.client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var nBound, nPending int
	for _, c := range l.Items {
		switch c.Status.Phase {
		case corev1.ClaimBound:
			nBound++
		case corev1.ClaimPending:
			nPending++
		}
	}
	if nBound != 40 || nPending != 10 {
		t.Fatalf("%d Bound, %d Pending; want 40 and 10", nBound, nPending)
	}
	_ = bound
	// The pending ones say why.
	evs, err := e.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=ProvisioningFailed"})
	if err != nil {
		t.Fatal(err)
	}
	why := ""
	for _, ev := range evs.Items {
		if strings.Contains(ev.Message, "pool small on node "+nodeName) && strings.Contains(ev.Message, "requested") {
			why = ev.Message
		}
	}
	if why == "" {
		t.Fatalf("no ProvisioningFailed event naming pool small and the sizes: %s", events(ctx, ns))
	}
	logf("scenario 4: a pending PVC's event: %s", why)
	// kubectl plinth explains a pending one in the same terms.
	for _, c := range l.Items {
		if c.Status.Phase == corev1.ClaimPending {
			out := kubectlPlinth(t, "why", "pvc", ns+"/"+c.Name)
			if !strings.Contains(out, "does not fit") || !strings.Contains(out, "pool small on node "+nodeName) {
				t.Errorf("kubectl plinth why pvc %s/%s:\n%s", ns, c.Name, out)
			}
			logf("scenario 4: kubectl plinth why pvc %s/%s:\n%s", ns, c.Name, out)
			break
		}
	}
	// Nothing over-committed: the node's own numbers.
	p2, err := e.pool(ctx, "small")
	if err != nil {
		t.Fatal(err)
	}
	if p2.Volumes != 40 || p2.ProvisionedBytes != 40*size || p2.CommittedBytes > p2.FreeBytes {
		t.Fatalf("pool small after: %d volumes, %d provisioned, committed %d of free %d", p2.Volumes, p2.ProvisionedBytes, p2.CommittedBytes, p2.FreeBytes)
	}
	deleteClaims(t, ctx, ns)
}

// createClaims creates n claims at once and waits until want are Bound;
// it returns each bound claim's latency from creation.
func createClaims(t *testing.T, ctx context.Context, ns, prefix string, n int, class, size string, want int, timeout time.Duration) []time.Duration {
	bound, _ := createClaimsPV(t, ctx, ns, prefix, n, class, size, want, timeout)
	return bound
}

// createClaimsPV is createClaims that also returns, per claim, when plinth
// had made its PV (the rest of the way to Bound is the PV controller's).
func createClaimsPV(t *testing.T, ctx context.Context, ns, prefix string, n int, class, size string, want int, timeout time.Duration) (bound, pvMade []time.Duration) {
	t.Helper()
	created := make([]time.Time, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			created[i] = time.Now()
			if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc(fmt.Sprintf("%s%03d", prefix, i), class, size, true), metav1.CreateOptions{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	boundAt, pvAt := map[string]time.Duration{}, map[string]time.Duration{}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if pvs, err := e.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{}); err == nil {
			for _, pv := range pvs.Items {
				if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == ns {
					if _, seen := pvAt[ref.Name]; !seen {
						i, _ := strconv.Atoi(strings.TrimPrefix(ref.Name, prefix))
						pvAt[ref.Name] = time.Since(created[i])
					}
				}
			}
		}
		l, err := e.client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range l.Items {
			if _, seen := boundAt[c.Name]; !seen && c.Status.Phase == corev1.ClaimBound {
				i, _ := strconv.Atoi(strings.TrimPrefix(c.Name, prefix))
				boundAt[c.Name] = time.Since(created[i])
			}
		}
		return len(boundAt) >= want, nil
	}); err != nil {
		t.Fatalf("%d of %d PVCs Bound, want %d: %v; events: %s", len(boundAt), n, want, err, events(ctx, ns))
	}
	sorted := func(m map[string]time.Duration) []time.Duration {
		var out []time.Duration
		for _, d := range m {
			out = append(out, d)
		}
		sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
		return out
	}
	return sorted(boundAt), sorted(pvAt)
}

func deleteClaims(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	if err := e.client.CoreV1().PersistentVolumeClaims(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		vols, err := e.plinthVolumes(ctx)
		if err != nil {
			return false, nil
		}
		for _, v := range vols {
			if strings.HasPrefix(v.Spec.Claim, ns+"/") {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("volumes of namespace %s not removed: %v", ns, err)
	}
}

// Latency: PVC→Bound for 1, 50 and 200 PVCs created at once (Immediate
// binding, raw block, pool local).
func TestBindLatency(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	// make test runs bursts of 1 and 50; make bench-nodes adds 200
	// (PLINTH_BIND_BURSTS), which the simulated-node test's 100 PVCs also cover.
	bursts := []int{1, 50}
	if v := os.Getenv("PLINTH_BIND_BURSTS"); v != "" {
		bursts = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 2000 {
				t.Fatalf("PLINTH_BIND_BURSTS=%q: %q is not a count in 1..2000", v, f)
			}
			bursts = append(bursts, n)
		}
	}
	for _, n := range bursts {
		ns := namespace(t, ctx, fmt.Sprintf("lat%d", n))
		start := time.Now()
		lat, pv := createClaimsPV(t, ctx, ns, "l", n, "plinth-local-immediate", "8Mi", n, 4*time.Minute)
		pct := func(d []time.Duration) string {
			if len(d) == 0 {
				return "-"
			}
			return fmt.Sprintf("p50 %s, p90 %s, max %s", d[len(d)/2].Round(time.Millisecond), d[len(d)*9/10].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
		}
		logf("latency: %d PVCs at once: all Bound in %s; PVC->PV made by plinth %s; PVC->Bound %s", n, time.Since(start).Round(time.Millisecond), pct(pv), pct(lat))
		deleteClaims(t, ctx, ns)
	}
}

// Scenario 5: pods requesting example.com/gpu get the device nodes, the
// environment and the CDI names; one asking for more than is free waits.
func TestGPUPods(t *testing.T) {
	need(t)
	defer timed(t, "scenario 5 (GPU pods)")()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "s5")
	gpuPod := func(name string, n int64) *corev1.Pod {
		p := appPod(name, "", false, "devices")
		q := *resource.NewQuantity(n, resource.DecimalSI)
		p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{"example.com/gpu": q}, Requests: corev1.ResourceList{"example.com/gpu": q}}
		return p
	}
	for _, p := range []*corev1.Pod{gpuPod("two", 2), gpuPod("four", 4)} {
		if _, err := e.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name, n := range map[string]int{"two": 2, "four": 4} {
		pod := waitPodRunning(t, ctx, ns, name, 2*time.Minute)
		log := waitLog(t, ctx, ns, name, "ready", time.Minute)
		checkOCIDevices(t, ctx, pod, n)
		if got := strings.Count(log, "chardev=/dev/nvidia") - strings.Count(log, "chardev=/dev/nvidiactl") - strings.Count(log, "chardev=/dev/nvidia-uvm"); got != n {
			t.Errorf("pod %s sees %d GPU device nodes, want %d:\n%s", name, got, n, log)
		}
		if !strings.Contains(log, "chardev=/dev/nvidiactl") {
			t.Errorf("pod %s lacks the shared /dev/nvidiactl:\n%s", name, log)
		}
		env := ""
		for _, l := range strings.Split(log, "\n") {
			if v, ok := strings.CutPrefix(l, "env="); ok {
				env = v
			}
		}
		ids := strings.TrimPrefix(env, "PLINTH_GPU_DEVICES=")
		if ids == env || len(strings.Split(ids, ",")) != n {
			t.Errorf("pod %s env %q: want PLINTH_GPU_DEVICES with %d IDs", name, env, n)
		}
	}
	// CDI: the spec plinth wrote names every device the pods got.
	cdi, _ := filepath.Glob(filepath.Join(hostRoot, "cdi", "*"))
	if len(cdi) == 0 {
		t.Error("no CDI spec written")
	} else {
		b, _ := os.ReadFile(cdi[0])
		if !strings.Contains(string(b), "0000:") {
			t.Errorf("CDI spec %s names no PCI device: %s", cdi[0], b)
		}
	}
	if _, err := e.client.CoreV1().Pods(ns).Create(ctx, gpuPod("three", 3), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	p, err := e.client.CoreV1().Pods(ns).Get(ctx, "three", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unschedulable := false
	for _, c := range p.Status.Conditions {
		unschedulable = unschedulable || c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && strings.Contains(c.Message, "example.com/gpu")
	}
	if p.Status.Phase != corev1.PodPending || !unschedulable {
		t.Fatalf("pod asking 3 GPUs with 2 free: phase %s, conditions %+v; want Pending, unschedulable for example.com/gpu", p.Status.Phase, p.Status.Conditions)
	}
	checkKubectlPlinth(t, ctx)
	for _, n := range []string{"two", "four", "three"} {
		deletePod(t, ctx, ns, n)
	}
}

// checkOCIDevices checks that the OCI spec containerd made for the pod's
// container names each device node once, and n GPUs: the device plugin
// answers both device nodes and CDI names, and the runtime applies both
// (containerd v2 applies the CDI edits last, replacing a node of the same
// path, so the shared nodes of the spec come first).
func checkOCIDevices(t *testing.T, ctx context.Context, pod *corev1.Pod, n int) {
	t.Helper()
	if len(pod.Status.ContainerStatuses) == 0 {
		t.Errorf("pod %s: no container status", pod.Name)
		return
	}
	id, ok := strings.CutPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://")
	if !ok {
		t.Errorf("pod %s: container ID %q is not containerd's", pod.Name, pod.Status.ContainerStatuses[0].ContainerID)
		return
	}
	b, err := e.c.ContainerSpec(ctx, id)
	if err != nil {
		t.Error(err)
		return
	}
	var spec struct {
		Linux struct {
			Devices []struct {
				Path string `json:"path"`
			} `json:"devices"`
			Resources struct {
				Devices []json.RawMessage `json:"devices"`
			} `json:"resources"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Errorf("pod %s: OCI spec: %v", pod.Name, err)
		return
	}
	count := map[string]int{}
	var paths []string
	gpus := 0
	for _, d := range spec.Linux.Devices {
		count[d.Path]++
		paths = append(paths, d.Path)
		if num, ok := strings.CutPrefix(d.Path, "/dev/nvidia"); ok && count[d.Path] == 1 && num != "" && strings.Trim(num, "0123456789") == "" {
			gpus++
		}
	}
	for p, c := range count {
		if c != 1 {
			t.Errorf("pod %s: the OCI spec names %s %d times: %v", pod.Name, p, c, paths)
		}
	}
	if gpus != n {
		t.Errorf("pod %s: the OCI spec names %d GPU device nodes, want %d: %v", pod.Name, gpus, n, paths)
	}
	logf("pod %s: OCI spec devices %v, %d device cgroup rules", pod.Name, paths, len(spec.Linux.Resources.Devices))
}

// Scenario 6: restart the kubelet; plinth registers again, allocatable
// comes back, the running pod keeps its volume.
func TestKubeletRestart(t *testing.T) {
	need(t)
	defer timed(t, "scenario 6 (kubelet restart)")()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	before, err := e.client.CoreV1().Pods("s3").Get(ctx, "btr", metav1.GetOptions{})
	if err != nil {
		t.Skipf("scenario 3's pod is not there to watch: %v", err)
	}
	regsBefore := registrations(t, ctx)
	start := time.Now()
	e.c.StopKubelet()
	// Remove the CSINode the kubelet wrote at registration: seeing plinth in
	// it again proves the kubelet registered the driver anew.
	if err := e.client.StorageV1().CSINodes().Delete(ctx, nodeName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.StartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		regs := registrations(t, ctx)
		return regs["csi"] > regsBefore["csi"] && regs["device-plugin:example.com/gpu"] > regsBefore["device-plugin:example.com/gpu"], nil
	}); err != nil {
		t.Fatalf("plinth was not registered again: before %v, now %v", regsBefore, registrations(t, ctx))
	}
	if err := e.waitPlinth(ctx); err != nil {
		t.Fatalf("after the kubelet restart: %v", err)
	}
	logf("scenario 6: kubelet restarted; CSI driver and device plugin registered again (registrations %v -> %v), 8 GPUs allocatable, in %s",
		regsBefore, registrations(t, ctx), time.Since(start).Round(time.Millisecond))
	after, err := e.client.CoreV1().Pods("s3").Get(ctx, "btr", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.UID != before.UID || after.Status.Phase != corev1.PodRunning || after.Status.ContainerStatuses[0].RestartCount != before.Status.ContainerStatuses[0].RestartCount {
		t.Fatalf("pod s3/btr changed across the kubelet restart: %s restarts %d", after.Status.Phase, after.Status.ContainerStatuses[0].RestartCount)
	}
	claim, err := e.client.CoreV1().PersistentVolumeClaims("s3").Get(ctx, "sub", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join("/var/lib/kubelet/pods", string(after.UID), "volumes/kubernetes.io~csi", claim.Spec.VolumeName, "mount")
	b, err := os.ReadFile(filepath.Join(mnt, "hello"))
	if err != nil || string(b) != "on-btrfs" {
		t.Fatalf("the pod's volume at %s after the restart: %q, %v", mnt, b, err)
	}
}

// Scenario 7: kill -9 plinth node and plinth controller while 20 PVCs are
// being provisioned: all 20 bind once they are back, nothing leaks.
func TestKillDuringProvisioning(t *testing.T) {
	need(t)
	defer timed(t, "scenario 7 (kill -9 while provisioning 20)")()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "s7")
	done := make(chan []time.Duration, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		for _, role := range []string{"node", "controller"} {
			n := killPlinth(role)
			logf("scenario 7: killed %d plinth %s process(es)", n, role)
		}
	}()
	lat := createClaims(t, ctx, ns, "k", 20, "plinth-local-immediate", "8Mi", 20, 5*time.Minute)
	done <- lat
	logf("scenario 7: all 20 Bound, the last %s after creation", lat[len(lat)-1].Round(time.Millisecond))
	// Exactly one Ready volume object per PVC, and as many images in the pool.
	vols, err := e.plinthVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mine := map[string]bool{}
	for _, v := range vols {
		if strings.HasPrefix(v.Spec.Claim, ns+"/") {
			if v.Status.Phase != v1alpha1.VolumeReady {
				t.Errorf("volume %s for %s is %s", v.Name, v.Spec.Claim, v.Status.Phase)
			}
			mine[v.Name] = true
		}
	}
	if len(mine) != 20 {
		t.Errorf("%d volume objects for the 20 PVCs", len(mine))
	}
	imgs := imagesIn(t, filepath.Join(hostRoot, "pools/local"))
	var ours int
	for _, img := range imgs {
		for id := range mine {
			if strings.Contains(img, id) {
				ours++
			}
		}
	}
	if ours != 20 || len(imgs) != len(localVolumes(t, ctx)) {
		t.Errorf("pool local holds %d images (%d of this test's volumes) for %d volume objects", len(imgs), ours, len(localVolumes(t, ctx)))
	}
	deleteClaims(t, ctx, ns)
	if left := imagesIn(t, filepath.Join(hostRoot, "pools/local")); len(left) != len(localVolumes(t, ctx)) {
		t.Errorf("after deleting, pool local holds %v", left)
	}
}

func localVolumes(t *testing.T, ctx context.Context) []string {
	vols, err := e.plinthVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vols {
		if v.Spec.Pool == "local" {
			out = append(out, v.Name)
		}
	}
	return out
}

// killPlinth sends SIGKILL to every "plinth <role>" process.
func killPlinth(role string) int {
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && strings.HasSuffix(args[0], "/plinth") && args[1] == role {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
	}
	return n
}

// registrations reads plinth node's plinth_kubelet_registrations_total by kind.
func registrations(t *testing.T, ctx context.Context) map[string]float64 {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9809/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(l, `plinth_kubelet_registrations_total{kind="`)
		if !ok {
			continue
		}
		kind, val, ok := strings.Cut(rest, `"} `)
		if ok {
			out[kind], _ = strconv.ParseFloat(val, 64)
		}
	}
	return out
}

// claimAndPod creates a claim and a pod using it, and waits for the pod to run.
func claimAndPod(t *testing.T, ctx context.Context, ns string, c *corev1.PersistentVolumeClaim, p *corev1.Pod) {
	t.Helper()
	if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, c, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodRunning(t, ctx, ns, p.Name, 3*time.Minute)
}
