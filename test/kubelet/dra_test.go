package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	kubeletdra "k8s.io/kubernetes/pkg/kubelet/cm/dra"
	draplugin "k8s.io/kubernetes/pkg/kubelet/cm/dra/plugin"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/dra"
	plinthkubelet "github.com/plinth-dev/plinth/pkg/kubelet"
)

const (
	draDriver = "plinth.example.com"
	draNode   = "node-a"
	draNS     = "ml"
)

// draKubelet is the kubelet's DRA side: its DRA manager (claim info cache
// and checkpoint, NodePrepareResources / NodeUnprepareResources through its
// DRA plugin client) and its plugin manager with the manager's DRA
// registration handler, on one kubelet directory.
type draKubelet struct {
	m      *kubeletdra.Manager
	cancel context.CancelFunc
	stopPM chan struct{}
}

func startDRAKubelet(t *testing.T, client *fake.Clientset, kubeletDir, stateDir string, pods func() []*v1.Pod) *draKubelet {
	t.Helper()
	logger := klog.Background()
	m, err := kubeletdra.NewManager(logger, client, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	getNode := func(ctx context.Context) (*v1.Node, error) {
		return client.CoreV1().Nodes().Get(ctx, draNode, metav1.GetOptions{})
	}
	if err := m.Start(ctx, pods, getNode, ready{}); err != nil {
		cancel()
		t.Fatal(err)
	}
	k := &draKubelet{m: m, cancel: cancel, stopPM: make(chan struct{})}
	pm := pluginmanager.NewPluginManager(plinthkubelet.PluginsRegistryDir(kubeletDir), record.NewFakeRecorder(64))
	pm.AddHandler(registerapi.DRAPlugin, m.GetWatcherHandler())
	go pm.Run(ctx, ready{}, k.stopPM)
	return k
}

// waitRegistered waits until the kubelet's DRA plugin manager has
// registered plinth's driver (found its socket in plugins_registry, asked
// GetInfo, validated the services and connected to the DRA endpoint).
func (k *draKubelet) waitRegistered(t *testing.T) time.Duration {
	t.Helper()
	pm := k.m.GetWatcherHandler().(*draplugin.DRAPluginManager)
	start := time.Now()
	for time.Since(start) < 30*time.Second {
		if p, err := pm.GetPlugin(draDriver); err == nil && p != nil {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the kubelet's plugin manager did not register plinth's DRA driver within 30s")
	return 0
}

// stop is a kubelet going away: the plugin manager and the DRA manager stop,
// the state directory stays.
func (k *draKubelet) stop() {
	close(k.stopPM)
	k.cancel()
	k.m.Stop()
}

// draClaim is a claim allocated by the scheduler: each device of plinth's
// pool on the node for request "gpus", reserved for pod.
func draClaim(name string, uid types.UID, pod *v1.Pod, devices ...string) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: draNS, Name: name, UID: uid}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for _, d := range devices {
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results,
			resourceapi.DeviceRequestAllocationResult{Request: "gpus", Driver: draDriver, Pool: draNode, Device: d})
	}
	c.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: pod.Name, UID: pod.UID}}
	return c
}

// draPod has container "main" using claim claimName and a sidecar "side"
// that uses none.
func draPod(name, claimName string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: draNS, Name: name, UID: types.UID("pod-" + name)},
		Spec: v1.PodSpec{
			NodeName:       draNode,
			ResourceClaims: []v1.PodResourceClaim{{Name: "gpus", ResourceClaimName: &claimName}},
			Containers: []v1.Container{
				{Name: "main", Resources: v1.ResourceRequirements{Claims: []v1.ResourceClaim{{Name: "gpus"}}}},
				{Name: "side"},
			},
		},
	}
}

// cdiIDs is what the kubelet hands the runtime for container name of pod.
func cdiIDs(t *testing.T, m *kubeletdra.Manager, pod *v1.Pod, name string) []string {
	t.Helper()
	for i := range pod.Spec.Containers {
		if c := &pod.Spec.Containers[i]; c.Name == name {
			info, err := m.GetResources(pod, c)
			if err != nil {
				t.Fatalf("GetResources for %s/%s: %v", pod.Name, name, err)
			}
			var ids []string
			for _, d := range info.CDIDevices {
				ids = append(ids, d.Name)
			}
			slices.Sort(ids)
			return ids
		}
	}
	t.Fatalf("pod %s has no container %s", pod.Name, name)
	return nil
}

// resolve reads the CDI directory with the CDI library container runtimes
// use (containerd, CRI-O) and resolves each ID the kubelet would pass on:
// the device nodes the container gets, its own and the spec's shared ones.
func resolve(t *testing.T, cdiDir string, ids []string) []string {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithSpecDirs(cdiDir), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	for path, errs := range cache.GetErrors() {
		t.Errorf("CDI spec %s: %v", path, errs)
	}
	seen := map[string]bool{}
	var nodes []string
	for _, id := range ids {
		d := cache.GetDevice(id)
		if d == nil {
			t.Errorf("CDI device %s not found in %s (devices: %v)", id, cdiDir, cache.ListDevices())
			continue
		}
		for _, n := range append(slices.Clone(d.ContainerEdits.DeviceNodes), d.GetSpec().ContainerEdits.DeviceNodes...) {
			if !seen[n.Path] {
				seen[n.Path] = true
				nodes = append(nodes, n.Path)
			}
		}
	}
	slices.Sort(nodes)
	return nodes
}

// waitDriverRegistered waits until plinth has heard the kubelet's
// NotifyRegistrationStatus saying it registered the driver.
func waitDriverRegistered(t *testing.T, drv *dra.Driver) {
	t.Helper()
	var err error
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(10 * time.Millisecond) {
		if err = drv.Registered(); err == nil {
			return
		}
	}
	t.Fatalf("plinth's DRA driver: %v", err)
}

// sliceDevices waits up to timeout for plinth's ResourceSlices of the node
// to list devices and counts them.
func sliceDevices(t *testing.T, client *fake.Clientset, timeout time.Duration) int {
	t.Helper()
	devs := 0
	for start := time.Now(); time.Since(start) < timeout; time.Sleep(20 * time.Millisecond) {
		list, err := client.ResourceV1().ResourceSlices().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		devs = 0
		for _, s := range list.Items {
			if s.Spec.Driver == draDriver && s.Spec.NodeName != nil && *s.Spec.NodeName == draNode {
				devs += len(s.Spec.Devices)
			}
		}
		if devs > 0 {
			break
		}
	}
	return devs
}

// TestKubeletDRA runs the kubelet's own DRA code (k8s.io/kubernetes
// pkg/kubelet/cm/dra: the DRA manager, its plugin client and registration
// handler under the kubelet's plugin manager) against plinth's DRA driver
// on the 8-GPU fixture, over real unix sockets: the kubelet registers the
// driver (and plinth hears that it did), prepares a pod's claim through NodePrepareResources, hands the
// container exactly the claim's CDI devices, which the CDI library resolves
// to the GPUs' nodes; after a kubelet restart (same checkpoint, and a lost
// one) plinth prepares nothing again; a claim for a GPU another claim holds
// is refused; unpreparing removes the spec.
// draRecorded is what plinth's DRA checkpoint under stateDir lists as
// prepared (nothing before the first claim).
func draRecorded(t *testing.T, stateDir string) map[types.UID]dra.PreparedClaim {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "dra", "prepared.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var cp struct {
		Claims map[types.UID]dra.PreparedClaim `json:"claims"`
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		t.Fatalf("plinth's DRA checkpoint: %v", err)
	}
	return cp.Claims
}

// draHost is a short temporary directory (unix socket paths must stay
// under 108 bytes) holding a copy of the 8-GPU fixture, and the host that
// copy is.
func draHost(t *testing.T) (string, device.Host) {
	t.Helper()
	dir, err := os.MkdirTemp("", "dra")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fx := filepath.Join(dir, "fx")
	if err := os.CopyFS(fx, os.DirFS("../../testdata/devices/nvidia-8gpu")); err != nil {
		t.Fatal(err)
	}
	return dir, device.Host{Sysfs: filepath.Join(fx, "sys"), Dev: filepath.Join(fx, "dev"), Proc: filepath.Join(fx, "proc")}
}

// draInventory is the default device configuration with its GPUs
// configured api: dra, and host's inventory of them.
func draInventory(t *testing.T, host device.Host) (device.Config, *device.Inventory) {
	t.Helper()
	cfg := device.DefaultConfig()
	cfg.Resources[0].API = device.APIDRA
	cfg.Defaults()
	inv := device.NewInventory(host, cfg)
	if _, _, err := inv.Scan(); err != nil {
		t.Fatal(err)
	}
	return cfg, inv
}

func TestKubeletDRA(t *testing.T) {
	dir, host := draHost(t)
	kubeletDir, cdiDir := filepath.Join(dir, "k"), filepath.Join(dir, "cdi")

	train := draPod("train", "train-gpus")
	thief := draPod("thief", "thief-gpus")
	trainClaim := draClaim("train-gpus", "5e1b0c4e-0000-4000-8000-000000000001", train, "pci-0000-18-00-0", "pci-0000-1a-00-0")
	// The scheduler would never allocate this: a device train's claim holds.
	thiefClaim := draClaim("thief-gpus", "5e1b0c4e-0000-4000-8000-000000000002", thief, "pci-0000-1a-00-0")
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: draNode, UID: "node-a-uid"}}
	node.Status.Allocatable = v1.ResourceList{v1.ResourceCPU: resource.MustParse("64"), v1.ResourcePods: resource.MustParse("110")}
	client := fake.NewClientset(node, trainClaim, thiefClaim, train, thief)
	// The fake clientset has no DeleteCollection; the kubelet's DRA plugin
	// manager wipes the node's ResourceSlices with it at start.
	var wipesMu sync.Mutex
	var wipes []string
	client.PrependReactor("delete-collection", "resourceslices", func(a k8stesting.Action) (bool, runtime.Object, error) {
		wipesMu.Lock()
		defer wipesMu.Unlock()
		wipes = append(wipes, a.(k8stesting.DeleteCollectionAction).GetListRestrictions().Fields.String())
		return true, nil, nil
	})

	// plinth node's DRA driver, as RunNode wires it for `api: dra`.
	cfg, inv := draInventory(t, host)
	// prepared counts the claims plinth prepares, as its metrics hear them
	// (answers from its checkpoint do not count).
	var prepared atomic.Int64
	plinthState := filepath.Join(dir, "st")
	drv, err := dra.New(dra.Config{DriverName: draDriver, NodeName: draNode, KubeletDir: kubeletDir, StateDir: plinthState,
		CDIDir: cdiDir, DevRoot: host.Dev, Resources: cfg.Resources, Inventory: inv, Client: client, HandoverPoll: 20 * time.Millisecond,
		ObservePrepare: func(int, time.Duration) { prepared.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go inv.Run(ctx)
	go func() { done <- drv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("driver Run: %v", err)
		}
	})

	// The kubelet's active pods, read by its DRA manager's reconcile loop.
	var podsMu sync.Mutex
	pods := []*v1.Pod{train, thief}
	active := func() []*v1.Pod { podsMu.Lock(); defer podsMu.Unlock(); return slices.Clone(pods) }
	setPods := func(p ...*v1.Pod) { podsMu.Lock(); defer podsMu.Unlock(); pods = p }
	k := startDRAKubelet(t, client, kubeletDir, filepath.Join(dir, "ks"), active)
	took := k.waitRegistered(t)
	t.Logf("the kubelet's plugin manager registered plinth's DRA driver %v after start", took)
	waitDriverRegistered(t, drv)
	for _, sock := range []string{
		filepath.Join(plinthkubelet.PluginsRegistryDir(kubeletDir), draDriver+"-dra-reg.sock"),
		filepath.Join(kubeletDir, "plugins", draDriver+"-dra", "dra.sock"),
	} {
		if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("socket %s: %v %v, want an owner-only socket", sock, fi, err)
		}
	}

	// The pod's claim: the kubelet calls NodePrepareResources and the
	// container using the claim gets exactly its devices' CDI IDs.
	prepare := func(k *draKubelet, pod *v1.Pod) error {
		t.Helper()
		c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return k.m.PrepareResources(c, pod)
	}
	if err := prepare(k, train); err != nil {
		t.Fatalf("PrepareResources: %v", err)
	}
	want := []string{
		"plinth.example.com/claim=" + string(trainClaim.UID) + "-pci-0000-18-00-0",
		"plinth.example.com/claim=" + string(trainClaim.UID) + "-pci-0000-1a-00-0",
	}
	if got := cdiIDs(t, k.m, train, "main"); !slices.Equal(got, want) {
		t.Errorf("container main gets CDI devices %v, want %v", got, want)
	}
	if got := cdiIDs(t, k.m, train, "side"); len(got) != 0 {
		t.Errorf("container side, which uses no claim, gets CDI devices %v", got)
	}
	spec := filepath.Join(cdiDir, "plinth.example.com-claim_"+string(trainClaim.UID)+".json")
	if _, err := os.Stat(spec); err != nil {
		t.Fatalf("CDI spec of the claim: %v", err)
	}
	if got, want := resolve(t, cdiDir, want), []string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"}; !slices.Equal(got, want) {
		t.Errorf("the CDI IDs resolve to device nodes %v, want %v", got, want)
	}
	if n := prepared.Load(); n != 1 {
		t.Errorf("plinth prepared %d claims, want 1", n)
	}
	if p, ok := draRecorded(t, plinthState)[trainClaim.UID]; !ok || p.Namespace != draNS || p.Name != "train-gpus" || len(p.Devices) != 2 {
		t.Errorf("plinth's record of the claim: %+v", p)
	}
	// Asked again by the same kubelet (a container restart): nothing to do.
	if err := prepare(k, train); err != nil {
		t.Fatalf("PrepareResources again: %v", err)
	}

	// Kubelet restart over the same checkpoint directory: the claim is
	// prepared in the kubelet's checkpoint; plinth registers with the new
	// plugin manager and is not asked to prepare it again.
	k.stop()
	k = startDRAKubelet(t, client, kubeletDir, filepath.Join(dir, "ks"), active)
	k.waitRegistered(t)
	if err := prepare(k, train); err != nil {
		t.Fatalf("PrepareResources after a kubelet restart: %v", err)
	}
	if got := cdiIDs(t, k.m, train, "main"); !slices.Equal(got, want) {
		t.Errorf("after a kubelet restart, container main gets %v, want %v", got, want)
	}

	// Kubelet restart that lost its checkpoint: the kubelet calls
	// NodePrepareResources again and plinth answers from its own checkpoint
	// (same CDI IDs, no second preparation).
	k.stop()
	k = startDRAKubelet(t, client, kubeletDir, filepath.Join(dir, "ks2"), active)
	defer func() { k.stop() }()
	k.waitRegistered(t)
	if err := prepare(k, train); err != nil {
		t.Fatalf("PrepareResources after a kubelet restart without its checkpoint: %v", err)
	}
	if got := cdiIDs(t, k.m, train, "main"); !slices.Equal(got, want) {
		t.Errorf("after a kubelet restart without its checkpoint, container main gets %v, want %v", got, want)
	}
	if n := prepared.Load(); n != 1 {
		t.Errorf("after kubelet restarts plinth prepared %d claims, want 1", n)
	}

	// A claim naming a GPU that train's claim holds is refused through the
	// kubelet, with plinth's reason, and leaves no spec.
	err = prepare(k, thief)
	if err == nil || !strings.Contains(err.Error(), "in use by claim "+draNS+"/train-gpus") {
		t.Errorf("PrepareResources for a claim on a GPU in use: %v, want plinth's refusal", err)
	} else {
		t.Logf("refused as the kubelet reports it: %v", err)
	}
	thiefSpec := filepath.Join(cdiDir, "plinth.example.com-claim_"+string(thiefClaim.UID)+".json")
	if _, err := os.Stat(thiefSpec); !os.IsNotExist(err) {
		t.Errorf("the refused claim left a CDI spec: %v", err)
	}
	if n, p := prepared.Load(), draRecorded(t, plinthState); n != 1 || len(p) != 1 {
		t.Errorf("after the refusal plinth prepared %d claims and holds %v", n, p)
	}
	// The kubelet unprepares the refused pod (it is deleted): plinth has
	// nothing of it and says so without touching train's claim.
	if err := k.m.UnprepareResources(context.Background(), thief); err != nil {
		t.Errorf("UnprepareResources for the refused pod: %v", err)
	}
	if _, err := os.Stat(spec); err != nil {
		t.Errorf("train's spec after the refused pod went: %v", err)
	}

	// The pod ends: the kubelet calls NodeUnprepareResources and the spec
	// and plinth's record go.
	setPods(thief)
	if err := k.m.UnprepareResources(context.Background(), train); err != nil {
		t.Fatalf("UnprepareResources: %v", err)
	}
	if _, err := os.Stat(spec); !os.IsNotExist(err) {
		t.Errorf("CDI spec still there after UnprepareResources: %v", err)
	}
	if p := draRecorded(t, plinthState); len(p) != 0 {
		t.Errorf("plinth still holds %v", p)
	}
	if k.m.PodMightNeedToUnprepareResources(train.UID) {
		t.Error("the kubelet still counts train's claim as prepared")
	}

	// The GPU is free again: thief's claim now prepares.
	if err := prepare(k, thief); err != nil {
		t.Errorf("PrepareResources for thief once the GPU is free: %v", err)
	} else if got, want := cdiIDs(t, k.m, thief, "main"), []string{"plinth.example.com/claim=" + string(thiefClaim.UID) + "-pci-0000-1a-00-0"}; !slices.Equal(got, want) {
		t.Errorf("thief's container gets %v, want %v", got, want)
	}

	// plinth published its pool, and the kubelet wiped only this node's slices.
	if n := sliceDevices(t, client, 10*time.Second); n != 8 {
		t.Errorf("plinth's ResourceSlices list %d devices, want 8", n)
	}
	wipesMu.Lock()
	defer wipesMu.Unlock()
	if len(wipes) == 0 {
		t.Error("the kubelet's DRA plugin manager never wiped the node's ResourceSlices at start")
	}
	for _, w := range wipes {
		if !strings.Contains(w, fmt.Sprintf("spec.nodeName=%s", draNode)) {
			t.Errorf("the kubelet wiped ResourceSlices with %q", w)
		}
	}
}

// TestKubeletDRARollingUpdate is a rolling update of plinth's DaemonSet
// with surge, against the kubelet's own DRA code: the new pod's driver
// starts while the old one serves, registers beside it under sockets named
// after its pod, and when the old one stops the kubelet never lacks a DRA
// service; a claim the old pod prepared after the new one had started is
// unprepared by the new one, which reads the shared checkpoint again.
func TestKubeletDRARollingUpdate(t *testing.T) {
	dir, host := draHost(t)
	kubeletDir, cdiDir, plinthState := filepath.Join(dir, "k"), filepath.Join(dir, "cdi"), filepath.Join(dir, "st")
	train := draPod("train", "train-gpus")
	trainClaim := draClaim("train-gpus", "5e1b0c4e-0000-4000-8000-000000000001", train, "pci-0000-18-00-0")
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: draNode, UID: "node-a-uid"}}
	client := fake.NewClientset(node, trainClaim, train)
	client.PrependReactor("delete-collection", "resourceslices", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, nil
	})
	cfg, inv := draInventory(t, host)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go inv.Run(ctx)
	// newDriver is plinth node's DRA driver in the pod with UID uid.
	newDriver := func(uid types.UID) *dra.Driver {
		t.Helper()
		drv, err := dra.New(dra.Config{DriverName: draDriver, NodeName: draNode, KubeletDir: kubeletDir, StateDir: plinthState,
			CDIDir: cdiDir, DevRoot: host.Dev, Resources: cfg.Resources, Inventory: inv, Client: client, HandoverPoll: 20 * time.Millisecond, PodUID: uid})
		if err != nil {
			t.Fatal(err)
		}
		return drv
	}
	run := func(drv *dra.Driver) (stop func()) {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- drv.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("driver Run: %v", err)
			}
		}
	}

	oldDrv := newDriver("0a0a0a0a-0000-4000-8000-00000000000a")
	stopOld := run(oldDrv)
	k := startDRAKubelet(t, client, kubeletDir, filepath.Join(dir, "ks"), func() []*v1.Pod { return []*v1.Pod{train} })
	defer func() { k.stop() }()
	k.waitRegistered(t)
	waitDriverRegistered(t, oldDrv)

	// The new pod's driver is made (it reads the checkpoint) before the
	// old one prepares train's claim.
	newDrv := newDriver("0b0b0b0b-0000-4000-8000-00000000000b")
	c, cancelPrepare := context.WithTimeout(ctx, 30*time.Second)
	defer cancelPrepare()
	if err := k.m.PrepareResources(c, train); err != nil {
		t.Fatalf("PrepareResources through the old pod's driver: %v", err)
	}
	stopNew := run(newDrv)
	defer stopNew()
	waitDriverRegistered(t, newDrv)
	regs, _ := filepath.Glob(filepath.Join(plinthkubelet.PluginsRegistryDir(kubeletDir), "*-reg.sock"))
	if len(regs) != 2 {
		t.Errorf("registration sockets with both pods running: %v, want one per pod", regs)
	}

	// The old pod stops: the kubelet has a DRA service all along.
	pm := k.m.GetWatcherHandler().(*draplugin.DRAPluginManager)
	watching, gaps := make(chan struct{}), make(chan int, 1)
	go func() {
		n := 0
		for {
			select {
			case <-watching:
				gaps <- n
				return
			default:
			}
			if p, err := pm.GetPlugin(draDriver); err != nil || p == nil {
				n++
			}
			time.Sleep(time.Millisecond)
		}
	}()
	stopOld()
	time.Sleep(200 * time.Millisecond) // the kubelet's plugin watcher sees the socket go
	close(watching)
	if n := <-gaps; n > 0 {
		t.Errorf("the kubelet had no DRA service for plinth %d times while the old pod stopped", n)
	}

	// The new pod's driver unprepares the claim the old one prepared.
	if err := k.m.UnprepareResources(ctx, train); err != nil {
		t.Fatalf("UnprepareResources through the new pod's driver: %v", err)
	}
	spec := filepath.Join(cdiDir, "plinth.example.com-claim_"+string(trainClaim.UID)+".json")
	if _, err := os.Stat(spec); !os.IsNotExist(err) {
		t.Errorf("CDI spec after UnprepareResources: %v", err)
	}
	if p := draRecorded(t, plinthState); len(p) != 0 {
		t.Errorf("plinth's checkpoint after the new pod unprepared the claim: %v, want none", p)
	}
	if regs, _ := filepath.Glob(filepath.Join(plinthkubelet.PluginsRegistryDir(kubeletDir), "*-reg.sock")); len(regs) != 1 {
		t.Errorf("registration sockets after the old pod stopped: %v, want the new pod's", regs)
	}
}
