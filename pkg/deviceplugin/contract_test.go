package deviceplugin

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	dpapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"sigs.k8s.io/yaml"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/kubelet"
)

// fakeKubelet is the kubelet's side of registration, built from
// k8s.io/kubelet's API: it records Register calls.
type fakeKubelet struct {
	dpapi.UnimplementedRegistrationServer
	regs chan *dpapi.RegisterRequest
	srv  *grpc.Server
	sock string
}

func (k *fakeKubelet) Register(_ context.Context, r *dpapi.RegisterRequest) (*dpapi.Empty, error) {
	if r.Version != dpapi.Version {
		return nil, status.Errorf(codes.InvalidArgument, "version %q", r.Version)
	}
	k.regs <- r
	return &dpapi.Empty{}, nil
}

func startKubelet(t *testing.T, kubeletDir string, k *fakeKubelet) {
	t.Helper()
	k.sock = kubelet.KubeletSocket(kubeletDir)
	os.MkdirAll(filepath.Dir(k.sock), 0o750)
	l, err := net.Listen("unix", k.sock)
	if err != nil {
		t.Fatal(err)
	}
	k.srv = grpc.NewServer()
	dpapi.RegisterRegistrationServer(k.srv, k)
	go k.srv.Serve(l)
}

func copyFixture(t *testing.T, name string) device.Host {
	t.Helper()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(filepath.Join("../../testdata/devices", name))); err != nil {
		t.Fatal(err)
	}
	return device.Host{Sysfs: filepath.Join(dst, "sys"), Dev: filepath.Join(dst, "dev"), Proc: filepath.Join(dst, "proc")}
}

type harness struct {
	host       device.Host
	kubeletDir string
	cdiDir     string
	k          *fakeKubelet
	cancel     func()
	done       chan error
}

// start runs inventory and manager as `plinth node --csi=false` does; the
// kubelet starts only after the plugin, to prove the plugin waits for it.
func start(t *testing.T, cfg device.Config) *harness {
	t.Helper()
	h := &harness{host: copyFixture(t, "nvidia-8gpu"), kubeletDir: t.TempDir(), cdiDir: filepath.Join(t.TempDir(), "cdi"),
		k: &fakeKubelet{regs: make(chan *dpapi.RegisterRequest, 16)}, done: make(chan error, 2)}
	cfg.Defaults()
	inv := device.NewInventory(h.host, cfg)
	mgr, err := NewManager(Config{KubeletDir: h.kubeletDir, CDIDir: h.cdiDir, DevRoot: h.host.Dev}, cfg.Resources, inv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- inv.Run(ctx) }()
	go func() { h.done <- mgr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-h.done
		<-h.done
		if h.k.srv != nil {
			h.k.srv.Stop()
		}
	})
	time.Sleep(100 * time.Millisecond) // plugin up, kubelet not yet
	startKubelet(t, h.kubeletDir, h.k)
	return h
}

func (h *harness) waitRegister(t *testing.T) *dpapi.RegisterRequest {
	t.Helper()
	select {
	case r := <-h.k.regs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no Register within 10s")
		return nil
	}
}

func (h *harness) dial(t *testing.T, endpoint string) dpapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(kubelet.DevicePluginDir(h.kubeletDir), endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return dpapi.NewDevicePluginClient(conn)
}

func recv(t *testing.T, s dpapi.DevicePlugin_ListAndWatchClient) map[string]string {
	t.Helper()
	type res struct {
		r   *dpapi.ListAndWatchResponse
		err error
	}
	ch := make(chan res, 1)
	go func() { r, err := s.Recv(); ch <- res{r, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		out := map[string]string{}
		for _, d := range r.r.Devices {
			out[d.ID] = d.Health
		}
		return out
	case <-time.After(15 * time.Second):
		t.Fatal("no ListAndWatch update within 15s")
		return nil
	}
}

func TestDevicePluginContract(t *testing.T) {
	cfg := device.DefaultConfig()
	cfg.Health.Interval = device.Duration{Duration: 200 * time.Millisecond}
	cfg.Health.RecoverAfter = device.Duration{Duration: 500 * time.Millisecond}
	cfg.Resources[0].Env["NVIDIA_VISIBLE_DEVICES"] = "indexes"
	h := start(t, cfg)

	// Register: v1beta1, our socket, the resource, preferred allocation on.
	reg := h.waitRegister(t)
	if reg.ResourceName != "example.com/gpu" || reg.Endpoint != "plinth-example-com-gpu.sock" || !reg.Options.GetPreferredAllocationAvailable {
		t.Fatalf("Register = %+v", reg)
	}
	sockPath := filepath.Join(kubelet.DevicePluginDir(h.kubeletDir), reg.Endpoint)
	if fi, err := os.Stat(sockPath); err != nil || fi.Mode().Perm()&0o007 != 0 {
		t.Fatalf("plugin socket %v mode %v: must not be world-accessible", err, fi.Mode())
	}
	c := h.dial(t, reg.Endpoint)
	opts, err := c.GetDevicePluginOptions(context.Background(), &dpapi.Empty{})
	if err != nil || !opts.GetPreferredAllocationAvailable {
		t.Fatalf("options %v %v", opts, err)
	}

	// ListAndWatch: the whole list at once, with NUMA topology.
	stream, err := c.ListAndWatch(context.Background(), &dpapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Devices) != 8 {
		t.Fatalf("initial list has %d devices, want 8", len(first.Devices))
	}
	for _, d := range first.Devices {
		want := int64(0)
		if d.ID > "0000:80" {
			want = 1
		}
		if d.Health != dpapi.Healthy || d.Topology == nil || d.Topology.Nodes[0].ID != want {
			t.Errorf("device %+v, want healthy on NUMA %d", d, want)
		}
	}

	// Health lost: GPU 2's node goes.
	gpu2 := "0000:3b:00.0"
	os.Remove(filepath.Join(h.host.Dev, "nvidia2"))
	if got := recv(t, stream); got[gpu2] != dpapi.Unhealthy || len(got) != 8 {
		t.Fatalf("after removing nvidia2: %v", got)
	}
	// Allocate refuses the unhealthy GPU and unknown IDs.
	for _, id := range []string{gpu2, "0000:ff:00.0", "../../etc"} {
		_, err := c.Allocate(context.Background(), &dpapi.AllocateRequest{ContainerRequests: []*dpapi.ContainerAllocateRequest{{DevicesIds: []string{id}}}})
		if err == nil {
			t.Errorf("Allocate(%s) succeeded", id)
		}
	}
	// Health regained, after the hysteresis.
	back := time.Now()
	os.WriteFile(filepath.Join(h.host.Dev, "nvidia2"), nil, 0o644)
	if got := recv(t, stream); got[gpu2] != dpapi.Healthy {
		t.Fatalf("after restoring nvidia2: %v", got)
	}
	if since := time.Since(back); since < 500*time.Millisecond {
		t.Errorf("advertised healthy after %v, before the 500ms hysteresis", since)
	}
	// A device removed (unplugged): it leaves the list.
	os.Remove(filepath.Join(h.host.Sysfs, "bus", "pci", "devices", "0000:bd:00.0"))
	if got := recv(t, stream); len(got) != 7 {
		t.Fatalf("after unplug: %v", got)
	}

	// GetPreferredAllocation: two GPUs under one switch; must-include kept.
	all := []string{"0000:18:00.0", "0000:1a:00.0", "0000:3b:00.0", "0000:3d:00.0", "0000:9a:00.0", "0000:9c:00.0", "0000:bb:00.0"}
	pref, err := c.GetPreferredAllocation(context.Background(), &dpapi.PreferredAllocationRequest{ContainerRequests: []*dpapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: all[1:], AllocationSize: 2},
		{AvailableDeviceIDs: all, MustIncludeDeviceIDs: []string{"0000:9c:00.0"}, AllocationSize: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"0000:3b:00.0", "0000:3d:00.0"}, pref.ContainerResponses[0].DeviceIDs); d != "" {
		t.Errorf("preferred (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"0000:9c:00.0", "0000:9a:00.0"}, pref.ContainerResponses[1].DeviceIDs); d != "" {
		t.Errorf("preferred with must-include (-want +got):\n%s", d)
	}

	// Allocate: device nodes, shared nodes, env and CDI names.
	alloc, err := c.Allocate(context.Background(), &dpapi.AllocateRequest{ContainerRequests: []*dpapi.ContainerAllocateRequest{{DevicesIds: []string{"0000:18:00.0", "0000:1a:00.0"}}}})
	if err != nil {
		t.Fatal(err)
	}
	cr := alloc.ContainerResponses[0]
	var paths []string
	for _, d := range cr.Devices {
		if d.HostPath != filepath.Join(h.host.Dev, strings.TrimPrefix(d.ContainerPath, "/dev/")) || d.Permissions != "rw" {
			t.Errorf("device spec %+v", d)
		}
		paths = append(paths, d.ContainerPath)
	}
	sort.Strings(paths)
	if d := cmp.Diff([]string{"/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"}, paths); d != "" {
		t.Errorf("device nodes (-want +got):\n%s", d)
	}
	if cr.Envs["PLINTH_GPU_DEVICES"] != "0000:18:00.0,0000:1a:00.0" || cr.Envs["NVIDIA_VISIBLE_DEVICES"] != "0,1" {
		t.Errorf("envs %v", cr.Envs)
	}
	if len(cr.CdiDevices) != 2 || cr.CdiDevices[0].Name != "example.com/gpu=0000:18:00.0" {
		t.Errorf("CDI devices %v", cr.CdiDevices)
	}
	// The CDI spec on disk names the same devices.
	b, err := os.ReadFile(filepath.Join(h.cdiDir, "example.com-gpu.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var spec cdispec.Spec
	if err := yaml.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	if spec.Kind != "example.com/gpu" || len(spec.Devices) < 7 || len(spec.ContainerEdits.DeviceNodes) != 3 {
		t.Errorf("CDI spec: kind %s, %d devices, %d shared nodes", spec.Kind, len(spec.Devices), len(spec.ContainerEdits.DeviceNodes))
	}

	// Kubelet restart: it clears the directory and serves kubelet.sock
	// again; the plugin re-creates its socket and registers at once.
	h.k.srv.Stop()
	entries, _ := os.ReadDir(kubelet.DevicePluginDir(h.kubeletDir))
	for _, e := range entries {
		os.Remove(filepath.Join(kubelet.DevicePluginDir(h.kubeletDir), e.Name()))
	}
	time.Sleep(100 * time.Millisecond)
	created := time.Now()
	startKubelet(t, h.kubeletDir, h.k)
	reg = h.waitRegister(t)
	took := time.Since(created)
	if reg.ResourceName != "example.com/gpu" {
		t.Fatalf("re-registration %+v", reg)
	}
	t.Logf("re-registered %v after kubelet.sock was created again", took)
	c = h.dial(t, reg.Endpoint)
	stream, err = c.ListAndWatch(context.Background(), &dpapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if got := recv(t, stream); len(got) != 7 {
		t.Fatalf("after kubelet restart: %v", got)
	}
}

func TestStrictSharing(t *testing.T) {
	cfg := device.DefaultConfig()
	cfg.Resources[0].Sharing = device.Sharing{Replicas: 2, Strict: true}
	h := start(t, cfg)
	reg := h.waitRegister(t)
	c := h.dial(t, reg.Endpoint)
	_, err := c.Allocate(context.Background(), &dpapi.AllocateRequest{ContainerRequests: []*dpapi.ContainerAllocateRequest{{DevicesIds: []string{"0000:18:00.0::0", "0000:18:00.0::1"}}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("two replicas of one device under strict sharing: %v", err)
	}
	resp, err := c.Allocate(context.Background(), &dpapi.AllocateRequest{ContainerRequests: []*dpapi.ContainerAllocateRequest{{DevicesIds: []string{"0000:18:00.0::0", "0000:1a:00.0::1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.ContainerResponses[0].CdiDevices); n != 2 {
		t.Errorf("%d CDI devices", n)
	}
}
