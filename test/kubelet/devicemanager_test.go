// Package kubelet runs the kubelet's device manager, the code the
// kubelet itself uses (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager),
// against plinth's device plugin on a fixture tree: registration,
// allocation for a pod through GetPreferredAllocation and Allocate, and the
// manager's view after a plugin restart and after a kubelet restart.
package kubelet

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"

	cadvisorapi "github.com/google/cadvisor/info/v1"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/deviceplugin"
)

const resourceName = "example.com/gpu"

type ready struct{}

func (ready) AddSource(string) {}
func (ready) AllReady() bool   { return true }

// kubeletDir is fixed: the device manager's exported constructor serves
// /var/lib/kubelet/device-plugins/kubelet.sock.
const kubeletDir = "/var/lib/kubelet"

func requireFreeKubeletDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the device manager serves " + pluginapi.KubeletSocket)
	}
	if c, err := net.Dial("unix", pluginapi.KubeletSocket); err == nil {
		c.Close()
		t.Skip("a kubelet is serving " + pluginapi.KubeletSocket + "; not touching it")
	}
}

type plinth struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startPlinth(t *testing.T, host device.Host) *plinth {
	cfg := device.DefaultConfig()
	cfg.Defaults()
	inv := device.NewInventory(host, cfg)
	mgr, err := deviceplugin.NewManager(deviceplugin.Config{KubeletDir: kubeletDir, DevRoot: host.Dev}, cfg.Resources, inv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &plinth{cancel: cancel, done: make(chan struct{})}
	go inv.Run(ctx)
	go func() { mgr.Run(ctx); close(p.done) }()
	return p
}

func (p *plinth) stop() { p.cancel(); <-p.done }

func startManager(t *testing.T, pods *[]*v1.Pod) *devicemanager.ManagerImpl {
	logger := klog.Background()
	topology := []cadvisorapi.Node{{Id: 0}, {Id: 1}}
	m, err := devicemanager.NewManagerImpl(logger, topology, topologymanager.NewFakeManager(logger))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(logger, func() []*v1.Pod { return *pods }, ready{}, containermap.NewContainerMap(), sets.New[string]()); err != nil {
		t.Fatal(err)
	}
	return m
}

// waitCapacity waits until the manager counts want healthy devices.
func waitCapacity(t *testing.T, m *devicemanager.ManagerImpl, capacity, allocatable int64) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 20*time.Second {
		c, a, _ := m.GetCapacity(klog.Background())
		cq, aq := c[v1.ResourceName(resourceName)], a[v1.ResourceName(resourceName)]
		if cq.Value() == capacity && aq.Value() == allocatable {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, a, _ := m.GetCapacity(klog.Background())
	t.Fatalf("device manager capacity %v allocatable %v, want %d/%d", c, a, capacity, allocatable)
	return 0
}

func gpuPod(name string, n int64) *v1.Pod {
	q := *resource.NewQuantity(n, resource.DecimalSI)
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Spec: v1.PodSpec{Containers: []v1.Container{{Name: "main", Resources: v1.ResourceRequirements{
			Limits: v1.ResourceList{v1.ResourceName(resourceName): q}, Requests: v1.ResourceList{v1.ResourceName(resourceName): q},
		}}}},
	}
}

func allocate(t *testing.T, m *devicemanager.ManagerImpl, pods *[]*v1.Pod, pod *v1.Pod) ([]string, *devicemanager.DeviceRunContainerOptions) {
	t.Helper()
	*pods = append(*pods, pod)
	c := &pod.Spec.Containers[0]
	if err := m.Allocate(context.Background(), pod, c, lifecycle.AddOperation); err != nil {
		t.Fatalf("Allocate for %s: %v", pod.Name, err)
	}
	opts, err := m.GetDeviceRunContainerOptions(context.Background(), pod, c)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for id := range m.GetDevices(string(pod.UID), c.Name)[resourceName] {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, opts
}

func TestKubeletDeviceManager(t *testing.T) {
	requireFreeKubeletDir(t)
	t.Cleanup(func() { os.RemoveAll(filepath.Join(kubeletDir, "device-plugins")) })
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS("../../testdata/devices/nvidia-8gpu")); err != nil {
		t.Fatal(err)
	}
	host := device.Host{Sysfs: filepath.Join(dst, "sys"), Dev: filepath.Join(dst, "dev"), Proc: filepath.Join(dst, "proc")}
	var pods []*v1.Pod

	m := startManager(t, &pods)
	p := startPlinth(t, host)
	took := waitCapacity(t, m, 8, 8)
	t.Logf("device manager counts 8 healthy %s %v after plinth started", resourceName, took)

	// A pod asking for two GPUs: the manager calls GetPreferredAllocation
	// and Allocate on plinth, and hands the runtime nodes, env and CDI names.
	ids, opts := allocate(t, m, &pods, gpuPod("train", 2))
	if len(ids) != 2 {
		t.Fatalf("allocated %v", ids)
	}
	if want := []string{"0000:18:00.0", "0000:1a:00.0"}; ids[0] != want[0] || ids[1] != want[1] {
		t.Errorf("allocated %v, want the two GPUs under one switch %v", ids, want)
	}
	var nodes []string
	for _, d := range opts.Devices {
		nodes = append(nodes, d.PathInContainer)
	}
	sort.Strings(nodes)
	t.Logf("container gets devices %v, env %v, CDI %v", nodes, opts.Envs, opts.CDIDevices)
	if len(nodes) != 5 || len(opts.CDIDevices) != 2 || len(opts.Envs) != 1 || opts.Envs[0].Value != "0000:18:00.0,0000:1a:00.0" {
		t.Errorf("run options: devices %v env %v cdi %v", nodes, opts.Envs, opts.CDIDevices)
	}

	// Plugin restart: plinth goes away and comes back; the manager sees it
	// register again and keeps the allocation.
	p.stop()
	p = startPlinth(t, host)
	defer p.stop()
	waitCapacity(t, m, 8, 8)
	ids2, _ := allocate(t, m, &pods, gpuPod("infer", 1))
	if len(ids2) != 1 || ids2[0] == ids[0] || ids2[0] == ids[1] {
		t.Errorf("after plugin restart allocated %v, overlapping %v", ids2, ids)
	}
	if got := m.GetDevices(string(pods[0].UID), "main")[resourceName]; len(got) != 2 {
		t.Errorf("first pod's devices after plugin restart: %v", got)
	}

	// Health: a GPU's node vanishes; the manager's allocatable drops.
	os.Remove(filepath.Join(host.Dev, "nvidia7"))
	waitCapacity(t, m, 8, 7)

	// Kubelet restart: a new manager clears the directory and serves
	// kubelet.sock again; plinth serves and registers again by itself.
	m.Stop(klog.Background())
	restarted := time.Now()
	m = startManager(t, &pods)
	defer m.Stop(klog.Background())
	waitCapacity(t, m, 8, 7)
	t.Logf("after a kubelet restart, the new device manager counts plinth's GPUs again after %v", time.Since(restarted))
}
