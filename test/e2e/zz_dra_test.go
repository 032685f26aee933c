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
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The DRA scenarios (issue 15) run on the chart's install, after
// TestZChartInstall and before the worker nodes join: the host node's GPU
// resource is switched from the device plugin to DRA and back by editing
// the chart's device ConfigMap and restarting the node's plinth pod.

const (
	draDriver = "plinth.example.com"
	gpuClass  = "gpu.example.com"
)

// The nvidia-8gpu fixture: PCI address → NVIDIA minor; minors 0-3 are on
// NUMA node 0, 4-7 on NUMA node 1.
var fixtureMinor = map[string]int{
	"0000:18:00.0": 0, "0000:1a:00.0": 1, "0000:3b:00.0": 2, "0000:3d:00.0": 3,
	"0000:9a:00.0": 4, "0000:9c:00.0": 5, "0000:bb:00.0": 6, "0000:bd:00.0": 7,
}

// sliceName is a fixture GPU's device name in the ResourceSlice.
func sliceName(bdf string) string {
	return "pci-" + strings.NewReplacer(":", "-", ".", "-").Replace(bdf)
}

func bdfOf(name string) string {
	for bdf := range fixtureMinor {
		if sliceName(bdf) == name {
			return bdf
		}
	}
	return ""
}

// nodeDevices are the devices of this node's ResourceSlices of plinth's driver.
func nodeDevices(ctx context.Context) ([]resourceapi.Device, error) {
	sel := fields.Set{resourceapi.ResourceSliceSelectorNodeName: nodeName, resourceapi.ResourceSliceSelectorDriver: draDriver}.AsSelector().String()
	l, err := e.client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return nil, err
	}
	var out []resourceapi.Device
	for _, s := range l.Items {
		out = append(out, s.Spec.Devices...)
	}
	return out, nil
}

// gpuAllocatable is the Node's allocatable example.com/gpu (-1 when absent).
func gpuAllocatable(ctx context.Context) (int64, error) {
	n, err := e.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return 0, err
	}
	q, ok := n.Status.Allocatable["example.com/gpu"]
	if !ok {
		return -1, nil
	}
	return q.Value(), nil
}

// neverBoth watches, until stop, that the node never offers GPUs through
// the device plugin (allocatable > 0) and DRA (slice devices) at once.
func neverBoth(ctx context.Context) (stop func() (violations []string, samples int)) {
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var bad []string
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			alloc, err1 := gpuAllocatable(ctx)
			devs, err2 := nodeDevices(ctx)
			if err1 == nil && err2 == nil {
				mu.Lock()
				n++
				if alloc > 0 && len(devs) > 0 {
					bad = append(bad, fmt.Sprintf("%s: allocatable %d and %d DRA devices", time.Now().Format("15:04:05.000"), alloc, len(devs)))
				}
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() ([]string, int) {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return bad, n
	}
}

// nodeMetric reads one unlabelled sample of plinth node's metrics (0 when
// absent).
func nodeMetric(ctx context.Context, name string) float64 {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9809/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// waitPrepared waits until plinth node's DRA checkpoint (under the chart's
// stateDir) lists n prepared claims.
func waitPrepared(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	path := filepath.Join(hostRoot, "state", "dra", "prepared.json")
	got := -1
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, nil
		}
		var cp struct {
			Claims map[string]json.RawMessage `json:"claims"`
		}
		if json.Unmarshal(b, &cp) != nil {
			return false, nil
		}
		got = len(cp.Claims)
		return got == n, nil
	}); err != nil {
		t.Fatalf("plinth's DRA checkpoint lists %d prepared claims, want %d", got, n)
	}
}

// hostPlinthPod is the chart's plinth node pod on the host node.
func hostPlinthPod(ctx context.Context) (*corev1.Pod, error) {
	l, err := e.client.CoreV1().Pods("plinth-system").List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=node", FieldSelector: "spec.nodeName=" + nodeName})
	if err != nil {
		return nil, err
	}
	for i := range l.Items {
		if l.Items[i].DeletionTimestamp == nil {
			return &l.Items[i], nil
		}
	}
	return nil, fmt.Errorf("no plinth node pod on %s", nodeName)
}

// setGPUAPI writes api into the chart's device ConfigMap and restarts the
// host node's plinth pod; it returns once the new pod runs.
func setGPUAPI(t *testing.T, ctx context.Context, api string) {
	t.Helper()
	cms := e.client.CoreV1().ConfigMaps("plinth-system")
	cm, err := cms.Get(ctx, "plinth-device-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := cm.Data["devices.yaml"]
	for _, from := range []string{"api: devicePlugin", "api: dra"} {
		data = strings.ReplaceAll(data, from, "api: "+api)
	}
	if !strings.Contains(data, "api: "+api) {
		t.Fatalf("the device ConfigMap names no api: %s", data)
	}
	cm.Data["devices.yaml"] = data
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	old, err := hostPlinthPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.client.CoreV1().Pods("plinth-system").Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := hostPlinthPod(ctx)
		return err == nil && p.UID != old.UID && p.Status.Phase == corev1.PodRunning, nil
	}); err != nil {
		t.Fatalf("plinth node did not come back after switching the GPUs to %s: %v", api, err)
	}
}

// gpuClaimPod is a pod running the e2e app's "devices" command with the
// claims of templates.
func gpuClaimPod(name string, templates ...string) *corev1.Pod {
	p := appPod(name, "", false, "devices")
	for _, tmpl := range templates {
		p.Spec.ResourceClaims = append(p.Spec.ResourceClaims, corev1.PodResourceClaim{Name: tmpl, ResourceClaimTemplateName: ptr(tmpl)})
		p.Spec.Containers[0].Resources.Claims = append(p.Spec.Containers[0].Resources.Claims, corev1.ResourceClaim{Name: tmpl})
	}
	return p
}

func gpuLimitPod(name string, n int64) *corev1.Pod {
	p := appPod(name, "", false, "devices")
	q := *resource.NewQuantity(n, resource.DecimalSI)
	p.Spec.Containers[0].Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{"example.com/gpu": q}, Requests: corev1.ResourceList{"example.com/gpu": q}}
	return p
}

// claimTemplate asks for count GPUs of the class, with CEL selectors.
func claimTemplate(name string, count int64, selectors ...string) *resourceapi.ResourceClaimTemplate {
	req := &resourceapi.ExactDeviceRequest{DeviceClassName: gpuClass, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: count}
	for _, s := range selectors {
		req.Selectors = append(req.Selectors, resourceapi.DeviceSelector{CEL: &resourceapi.CELDeviceSelector{Expression: s}})
	}
	return &resourceapi.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: resourceapi.ResourceClaimTemplateSpec{
		Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{Name: "gpus", Exactly: req}}}}}}
}

// podGPUs are the fixture PCI addresses of the devices allocated to the
// pod's claims (its own and the one made for its extended resources).
func podGPUs(t *testing.T, ctx context.Context, p *corev1.Pod) []string {
	t.Helper()
	var names []string
	for _, s := range p.Status.ResourceClaimStatuses {
		if s.ResourceClaimName != nil {
			names = append(names, *s.ResourceClaimName)
		}
	}
	if s := p.Status.ExtendedResourceClaimStatus; s != nil {
		names = append(names, s.ResourceClaimName)
	}
	var out []string
	for _, n := range names {
		c, err := e.client.ResourceV1().ResourceClaims(p.Namespace).Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c.Status.Allocation == nil {
			t.Fatalf("claim %s of pod %s is not allocated", n, p.Name)
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver != draDriver || r.Pool != nodeName {
				t.Errorf("claim %s: device %s/%s/%s is not plinth's on %s", n, r.Driver, r.Pool, r.Device, nodeName)
			}
			out = append(out, bdfOf(r.Device))
		}
	}
	sort.Strings(out)
	return out
}

// checkPodGPUs checks what the pod's container sees: exactly the device
// nodes of its allocated GPUs (and the shared nvidiactl), each once in its
// OCI spec, and PLINTH_GPU_DEVICES naming them.
func checkPodGPUs(t *testing.T, ctx context.Context, ns, name string) []string {
	t.Helper()
	pod := waitPodRunning(t, ctx, ns, name, 2*time.Minute)
	log := waitLog(t, ctx, ns, name, "ready", time.Minute)
	gpus := podGPUs(t, ctx, pod)
	var want, got []string
	for _, bdf := range gpus {
		want = append(want, "/dev/nvidia"+strconv.Itoa(fixtureMinor[bdf]))
	}
	env := ""
	for _, l := range strings.Split(log, "\n") {
		if dev, ok := strings.CutPrefix(l, "chardev="); ok && strings.Trim(strings.TrimPrefix(dev, "/dev/nvidia"), "0123456789") == "" {
			got = append(got, dev)
		}
		if v, ok := strings.CutPrefix(l, "env="); ok {
			env = v
		}
	}
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("pod %s sees GPU nodes %v, its claims hold %v (%v)", name, got, want, gpus)
	}
	if !strings.Contains(log, "chardev=/dev/nvidiactl") {
		t.Errorf("pod %s lacks the shared /dev/nvidiactl:\n%s", name, log)
	}
	ids := strings.Split(strings.TrimPrefix(env, "PLINTH_GPU_DEVICES="), ",")
	sort.Strings(ids)
	if strings.Join(ids, ",") != strings.Join(gpus, ",") {
		t.Errorf("pod %s: env %q, want PLINTH_GPU_DEVICES=%s", name, env, strings.Join(gpus, ","))
	}
	checkOCIDevices(t, ctx, pod, len(gpus))
	return gpus
}

// unschedulable waits a little and reports the pod's PodScheduled=False
// message ("" if it was scheduled or says nothing).
func unschedulable(t *testing.T, ctx context.Context, ns, name string) string {
	t.Helper()
	msg := ""
	_ = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 15*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				msg = c.Message
				return true, nil
			}
		}
		return false, nil
	})
	return msg
}

// waitTaint waits until the slice device of bdf is tainted (or untainted)
// and returns how long it took.
func waitTaint(t *testing.T, ctx context.Context, bdf string, tainted bool, since time.Time) time.Duration {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		devs, err := nodeDevices(ctx)
		if err != nil {
			return false, nil
		}
		for _, d := range devs {
			if d.Name == sliceName(bdf) {
				has := false
				for _, tt := range d.Taints {
					has = has || tt.Key == "plinth.example.com/unhealthy" && tt.Effect == resourceapi.DeviceTaintEffectNoSchedule && tt.Value != ""
				}
				return has == tainted, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("device %s tainted=%t not seen in its ResourceSlice: %v", bdf, tainted, err)
	}
	return time.Since(since)
}

func TestZDRA(t *testing.T) {
	need(t)
	chartRenders(t) // runs on the chart's install (its device ConfigMap)
	defer timed(t, "DRA scenarios")()
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	if _, err := e.client.CoreV1().ConfigMaps("plinth-system").Get(ctx, "plinth-device-config", metav1.GetOptions{}); err != nil {
		t.Skipf("the chart's install is not there: %v", err)
	}
	// The shipped DeviceClass (deploy/overlays/dra).
	class, err := os.ReadFile(filepath.Join(e.repo, "deploy/overlays/dra/deviceclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := apply(ctx, e.cfg, class); err != nil {
		t.Fatal(err)
	}
	ns := namespace(t, ctx, "dra")
	restored := false
	defer func() {
		if !restored {
			// Leave the node as the later tests expect: GPUs through the device plugin.
			cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer ccancel()
			_ = e.client.CoreV1().Pods(ns).DeleteCollection(cctx, metav1.DeleteOptions{GracePeriodSeconds: ptr[int64](0)}, metav1.ListOptions{})
			setGPUAPI(t, cctx, "devicePlugin")
		}
	}()

	// Scenario 5, first half: device plugin → DRA, never both.
	watch := neverBoth(ctx)
	start := time.Now()
	setGPUAPI(t, ctx, "dra")
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		devs, err := nodeDevices(ctx)
		return err == nil && len(devs) == 8, nil
	}); err != nil {
		devs, _ := nodeDevices(ctx)
		alloc, _ := gpuAllocatable(ctx)
		t.Fatalf("8 GPUs not published through DRA: %d devices, allocatable %d", len(devs), alloc)
	}
	published := time.Since(start)
	bad, samples := watch()
	if len(bad) > 0 {
		t.Errorf("device plugin → DRA: the node offered GPUs both ways: %v", bad)
	}
	logf("DRA scenario 5a: device plugin → DRA: 8 GPUs in the node's ResourceSlice %s after the switch; never both in %d samples", published.Round(time.Millisecond), samples)
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		regs := registrations(t, ctx)
		return regs["dra"] >= 1, nil
	}); err != nil {
		t.Fatalf("the kubelet did not register the DRA driver: %v", registrations(t, ctx))
	}
	devs, _ := nodeDevices(ctx)
	for _, d := range devs {
		for _, a := range []resourceapi.QualifiedName{"resource.kubernetes.io/pciBusID", "resource.kubernetes.io/pcieRoot", "resource.kubernetes.io/numaNode", "vendor", "deviceID", "driver", "resource"} {
			if _, ok := d.Attributes[a]; !ok {
				t.Errorf("slice device %s lacks attribute %s", d.Name, a)
			}
		}
	}

	// Scenario 1: a claim template for 2 GPUs on NUMA node 1.
	rct := e.client.ResourceV1().ResourceClaimTemplates(ns)
	for _, tmpl := range []*resourceapi.ResourceClaimTemplate{
		claimTemplate("numa1", 2, `device.attributes["resource.kubernetes.io"].numaNode == 1`),
		claimTemplate("one", 1),
	} {
		if _, err := rct.Create(ctx, tmpl, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pods := e.client.CoreV1().Pods(ns)
	if _, err := pods.Create(ctx, gpuClaimPod("numa1", "numa1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	numa1 := checkPodGPUs(t, ctx, ns, "numa1")
	for _, bdf := range numa1 {
		if fixtureMinor[bdf] < 4 {
			t.Errorf("pod numa1 got %s, on NUMA node 0", bdf)
		}
	}
	if len(numa1) != 2 {
		t.Fatalf("pod numa1 got %v, want 2 GPUs", numa1)
	}
	logf("DRA scenario 1: a claim for 2 GPUs on NUMA node 1 got %v; the container sees exactly their nodes, nvidiactl and PLINTH_GPU_DEVICES", numa1)

	// Scenario 2: limits {example.com/gpu: 2} served through DRA; 5 more do not fit.
	if _, err := pods.Create(ctx, gpuLimitPod("limits", 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	limits := checkPodGPUs(t, ctx, ns, "limits")
	if p, _ := pods.Get(ctx, "limits", metav1.GetOptions{}); p.Status.ExtendedResourceClaimStatus == nil || len(limits) != 2 {
		t.Fatalf("pod limits: extended resource claim %+v, GPUs %v: want 2 through DRA", p.Status.ExtendedResourceClaimStatus, limits)
	}
	if _, err := pods.Create(ctx, gpuLimitPod("toomany", 5), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	msg := unschedulable(t, ctx, ns, "toomany")
	if msg == "" {
		p, _ := pods.Get(ctx, "toomany", metav1.GetOptions{})
		t.Fatalf("pod asking 5 GPUs with 4 free: %s %+v; want Pending, Unschedulable", p.Status.Phase, p.Status.Conditions)
	}
	logf("DRA scenario 2: limits {example.com/gpu: 2} got %v through DRA; 5 with 4 free stays Pending: %q", limits, msg)
	deletePod(t, ctx, ns, "toomany")

	// Scenario 3: a device loses health: tainted, avoided, back and untainted;
	// a pod using a device that turns unhealthy says so in its status.
	used := map[string]bool{}
	for _, b := range append(numa1, limits...) {
		used[b] = true
	}
	var free string
	for bdf := range fixtureMinor {
		if !used[bdf] && (free == "" || bdf < free) {
			free = bdf
		}
	}
	devDir := filepath.Join(hostRoot, "devices", "dev")
	nodeOf := func(bdf string) string { return filepath.Join(devDir, "nvidia"+strconv.Itoa(fixtureMinor[bdf])) }
	lost := time.Now()
	for _, bdf := range []string{free, numa1[0]} {
		if err := os.Rename(nodeOf(bdf), nodeOf(bdf)+".gone"); err != nil {
			t.Fatal(err)
		}
	}
	tainted := waitTaint(t, ctx, free, true, lost)
	if _, err := rct.Create(ctx, claimTemplate("that", 1, fmt.Sprintf(`device.attributes["resource.kubernetes.io"].pciBusID == %q`, free)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Create(ctx, gpuClaimPod("avoid", "that"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if msg := unschedulable(t, ctx, ns, "avoid"); msg == "" {
		t.Errorf("a claim for the tainted device %s was scheduled", free)
	}
	// The kubelet's view of the running pod's device (ResourceHealthStatus).
	health := ""
	_ = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 45*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, "numa1", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false, nil
		}
		for _, rs := range p.Status.ContainerStatuses[0].AllocatedResourcesStatus {
			for _, r := range rs.Resources {
				if strings.HasSuffix(string(r.ResourceID), sliceName(numa1[0])) && r.Health == corev1.ResourceHealthStatusUnhealthy {
					health = fmt.Sprintf("%s %s %s", rs.Name, r.ResourceID, r.Health)
					return true, nil
				}
			}
		}
		return false, nil
	})
	if health == "" {
		p, _ := pods.Get(ctx, "numa1", metav1.GetOptions{})
		t.Errorf("pod numa1's status does not say its device %s is unhealthy: %+v", numa1[0], p.Status.ContainerStatuses)
	}
	back := time.Now()
	for _, bdf := range []string{free, numa1[0]} {
		if err := os.Rename(nodeOf(bdf)+".gone", nodeOf(bdf)); err != nil {
			t.Fatal(err)
		}
	}
	untainted := waitTaint(t, ctx, free, false, back)
	avoid := checkPodGPUs(t, ctx, ns, "avoid")
	logf("DRA scenario 3: device node of %s removed: tainted in the API after %s; a claim for it stayed Pending; pod status: %s; restored: untainted after %s (recoverAfter 2s), and the waiting pod got %v",
		free, tainted.Round(time.Millisecond), health, untainted.Round(time.Millisecond), avoid)
	deletePod(t, ctx, ns, "avoid")
	// The pod object goes at once (grace 0); the kubelet unprepares its
	// claim after, and until then plinth refuses its device to another claim.
	waitPrepared(t, ctx, 2)

	// Scenario 4: restart plinth node and the kubelet while claims are prepared.
	before := map[string]*corev1.Pod{}
	for _, n := range []string{"numa1", "limits"} {
		if before[n], err = pods.Get(ctx, n, metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := hostPlinthPod(ctx)
	if err := e.client.CoreV1().Pods("plinth-system").Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := hostPlinthPod(ctx)
		return err == nil && p.UID != old.UID && p.Status.Phase == corev1.PodRunning && registrations(t, ctx)["dra"] >= 1, nil
	}); err != nil {
		t.Fatalf("plinth node did not come back and register DRA: %v", err)
	}
	regs := registrations(t, ctx)["dra"]
	e.c.StopKubelet()
	if err := e.c.StartKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		return registrations(t, ctx)["dra"] > regs, nil
	}); err != nil {
		t.Fatalf("the restarted kubelet did not register the DRA driver again")
	}
	for n, b := range before {
		a, err := pods.Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if a.UID != b.UID || a.Status.Phase != corev1.PodRunning || a.Status.ContainerStatuses[0].RestartCount != b.Status.ContainerStatuses[0].RestartCount {
			t.Errorf("pod %s changed across the restarts: %s, restarts %d", n, a.Status.Phase, a.Status.ContainerStatuses[0].RestartCount)
		}
	}
	if _, err := pods.Create(ctx, gpuClaimPod("after", "one"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	after := checkPodGPUs(t, ctx, ns, "after")
	prepared := nodeMetric(ctx, "plinth_dra_claim_prepare_duration_seconds_count")
	if prepared != 1 {
		t.Errorf("the restarted plinth node prepared %v claims, want 1 (the new pod's; the running pods' claims come from its checkpoint)", prepared)
	}
	logf("DRA scenario 4: plinth node and the kubelet restarted under 2 running claim pods: both kept running with their devices; a new claim got %v, prepared once (%v preparations by the new process)", after, prepared)

	// Scenario 5, second half: DRA → device plugin while pods still hold
	// claims: the plugin waits for them, and the node never offers both.
	watch = neverBoth(ctx)
	setGPUAPI(t, ctx, "devicePlugin")
	time.Sleep(5 * time.Second)
	if alloc, _ := gpuAllocatable(ctx); alloc > 0 {
		t.Errorf("allocatable %d through the device plugin while DRA claims hold GPUs", alloc)
	}
	if r := registrations(t, ctx); r["device-plugin:example.com/gpu"] > 0 {
		t.Errorf("the device plugin registered while DRA claims hold GPUs: %v", r)
	}
	start = time.Now()
	for _, n := range []string{"numa1", "limits", "after"} {
		deletePod(t, ctx, ns, n)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		alloc, err := gpuAllocatable(ctx)
		devs, err2 := nodeDevices(ctx)
		return err == nil && err2 == nil && alloc == 8 && len(devs) == 0, nil
	}); err != nil {
		alloc, _ := gpuAllocatable(ctx)
		t.Fatalf("after the DRA pods went: allocatable %d, want 8 through the device plugin", alloc)
	}
	back2 := time.Since(start)
	bad, samples = watch()
	if len(bad) > 0 {
		t.Errorf("DRA → device plugin: the node offered GPUs both ways: %v", bad)
	}
	restored = true
	logf("DRA scenario 5b: DRA → device plugin with 3 pods holding claims: the plugin waited for them; 8 GPUs allocatable %s after they were deleted; never both in %d samples", back2.Round(time.Millisecond), samples)
}
