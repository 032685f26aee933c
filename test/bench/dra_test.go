package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	dpapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/dra"
)

var draRounds = flag.Int("dra-rounds", 200, "interleaved rounds per claim size in TestBenchDRAPrepare (NodePrepareResources twice, NodeUnprepareResources, Allocate)")

const (
	draBenchDriver = "plinth.example.com"
	draBenchNode   = "node-a"
)

// TestBenchDRAPrepare measures plinth's DRA driver over its real gRPC
// socket on the 8-GPU fixture, called as the kubelet calls it:
// NodePrepareResources (the kubeletplugin helper reads the claim from the
// API, a fake clientset here; plinth writes the claim's CDI spec and its
// checkpoint, each fsynced), the same call again (the claim already
// prepared: the answer after a kubelet restart) and NodeUnprepareResources,
// for claims of 1 and 8 GPUs. The baseline is the device plugin's Allocate
// for as many GPUs over its own socket, interleaved with them in one run.
func TestBenchDRAPrepare(t *testing.T) {
	if os.Getenv(benchEnv) == "" {
		t.Skip("benchmarks run with `make bench` (" + benchEnv + "=1)")
	}
	// Short paths: the sockets live below it (unix socket paths < 108 bytes).
	dir, err := os.MkdirTemp("", "drab")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fx := filepath.Join(dir, "fx")
	if err := os.CopyFS(fx, os.DirFS("../../testdata/devices/nvidia-8gpu")); err != nil {
		t.Fatal(err)
	}
	host := device.Host{Sysfs: filepath.Join(fx, "sys"), Dev: filepath.Join(fx, "dev"), Proc: filepath.Join(fx, "proc")}

	// The baseline: plinth's device plugin for the same GPUs.
	dpCfg := device.DefaultConfig()
	dpCfg.Health.RecoverAfter.Duration = 200 * time.Millisecond // the health rounds below
	dpCfg.Defaults()
	dp, stream := servePlugin(t, host, dpCfg)
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	draCfg := device.DefaultConfig()
	draCfg.Resources[0].API = device.APIDRA
	draCfg.Health.RecoverAfter.Duration = 200 * time.Millisecond
	draCfg.Defaults()
	b := serveDRA(t, dir, host, draCfg)

	ctx := context.Background()
	type series struct{ allocate, prepare, again, unprepare, inPlinth []time.Duration }
	sizes := []int{1, 8}
	lat := map[int]*series{}
	round := func(n int, record bool) {
		claim := b.claims[n]
		req := []*drapb.Claim{{Namespace: claim.Namespace, Name: claim.Name, Uid: string(claim.UID)}}
		timed := func(f func() error) time.Duration {
			t0 := time.Now()
			if err := f(); err != nil {
				t.Fatal(err)
			}
			return time.Since(t0)
		}
		prepare := func() error {
			resp, err := b.c.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: req})
			if err != nil {
				return err
			}
			r := resp.Claims[string(claim.UID)]
			if r == nil || r.Error != "" || len(r.Devices) != n {
				return fmt.Errorf("NodePrepareResources for %d devices: %+v", n, r)
			}
			return nil
		}
		unprepare := func() error {
			resp, err := b.c.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: req})
			if err != nil {
				return err
			}
			if r := resp.Claims[string(claim.UID)]; r == nil || r.Error != "" {
				return fmt.Errorf("NodeUnprepareResources for %d devices: %+v", n, r)
			}
			return nil
		}
		allocate := func() error {
			_, err := dp.Allocate(ctx, &dpapi.AllocateRequest{ContainerRequests: []*dpapi.ContainerAllocateRequest{{DevicesIds: b.ids[:n]}}})
			return err
		}
		s := lat[n]
		a := timed(allocate)
		p := timed(prepare)
		g := timed(prepare)
		u := timed(unprepare)
		in := b.takeObserved()
		if record {
			s.allocate, s.prepare, s.again, s.unprepare = append(s.allocate, a), append(s.prepare, p), append(s.again, g), append(s.unprepare, u)
			s.inPlinth = append(s.inPlinth, in...)
		}
	}
	for _, n := range sizes {
		lat[n] = &series{}
		for i := 0; i < 10; i++ { // warm-up: connections, page cache, the helper's client
			round(n, false)
		}
	}
	for i := 0; i < *draRounds; i++ {
		for _, n := range sizes {
			round(n, true)
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "\nDRA kubelet plugin over its unix socket vs the device plugin's Allocate, 8-GPU fixture; %d rounds per size, interleaved\n"+
		"(each round: Allocate, NodePrepareResources, the same again, NodeUnprepareResources); CDI spec and checkpoint on %s\n",
		*draRounds, fsName(dir))
	fmt.Fprintf(&out, "%-46s %8s %10s %10s %12s\n", "case", "samples", "p50", "p99", "p50 vs base")
	for _, n := range sizes {
		s := lat[n]
		base := pct(s.allocate, 0.5)
		row := func(name string, d []time.Duration) {
			fmt.Fprintf(&out, "%-46s %8d %10s %10s %11.1fx\n", name, len(d), pct(d, 0.5).Round(time.Microsecond),
				pct(d, 0.99).Round(time.Microsecond), float64(pct(d, 0.5))/float64(base))
		}
		row(fmt.Sprintf("Allocate, %d GPU(s) (base)", n), s.allocate)
		row(fmt.Sprintf("NodePrepareResources, %d GPU(s)", n), s.prepare)
		row("  of which plinth's prepare (ObservePrepare)", s.inPlinth)
		row(fmt.Sprintf("NodePrepareResources again, %d GPU(s)", n), s.again)
		row(fmt.Sprintf("NodeUnprepareResources, %d GPU(s)", n), s.unprepare)
	}
	healthRounds(t, &out, b, host, stream)
	fmt.Print(out.String())
}

// healthRounds times a device's loss of health until the DRA driver's taint
// is in the (fake) API's ResourceSlice, against the device plugin's
// ListAndWatch sending it Unhealthy (the base); both inventories watch the
// same /dev, rounds interleaved by construction.
func healthRounds(t *testing.T, out *strings.Builder, b *draBench, host device.Host, stream dpapi.DevicePlugin_ListAndWatchClient) {
	t.Helper()
	ctx := context.Background()
	dev := filepath.Join(host.Dev, "nvidia3")
	id, name := b.ids[3], b.names[3]
	tainted := func() bool {
		l, err := b.client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, sl := range l.Items {
			for _, d := range sl.Spec.Devices {
				if d.Name == name {
					return len(d.Taints) > 0
				}
			}
		}
		return false
	}
	dpHealthy := func(want bool) time.Duration { // waits for the plugin's list to say so
		t0 := time.Now()
		for {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range resp.Devices {
				if d.ID == id && (d.Health == dpapi.Healthy) == want {
					return time.Since(t0)
				}
			}
		}
	}
	waitTaint := func(want bool) {
		for deadline := time.Now().Add(30 * time.Second); tainted() != want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("taint on %s not %t after 30s", name, want)
			}
		}
	}
	var dpLat, taintLat []time.Duration
	for i := 0; i < 10; i++ {
		t0 := time.Now()
		if err := os.Rename(dev, dev+".gone"); err != nil {
			t.Fatal(err)
		}
		dpDone := make(chan time.Duration, 1)
		go func() { dpHealthy(false); dpDone <- time.Since(t0) }()
		waitTaint(true)
		taintLat = append(taintLat, time.Since(t0))
		dpLat = append(dpLat, <-dpDone)
		if err := os.Rename(dev+".gone", dev); err != nil {
			t.Fatal(err)
		}
		dpHealthy(true)
		waitTaint(false)
	}
	base := pct(dpLat, 0.5)
	fmt.Fprintf(out, "\nHealth loss (a device node removed) until it shows, 10 rounds; /dev watched with inotify\n")
	fmt.Fprintf(out, "%-50s %8s %10s %10s %12s\n", "case", "samples", "p50", "p99", "p50 vs base")
	for _, r := range []struct {
		name string
		d    []time.Duration
	}{{"device plugin ListAndWatch says Unhealthy (base)", dpLat}, {"DRA taint in the ResourceSlice (fake API)", taintLat}} {
		fmt.Fprintf(out, "%-50s %8d %10s %10s %11.1fx\n", r.name, len(r.d), pct(r.d, 0.5).Round(time.Microsecond),
			pct(r.d, 0.99).Round(time.Microsecond), float64(pct(r.d, 0.5))/float64(base))
	}
}

// draBench is a started DRA driver: a client on its DRA socket, a claim per
// size in its API, and the prepare times its ObservePrepare heard.
type draBench struct {
	c      drapb.DRAPluginClient
	client *fake.Clientset
	claims map[int]*resourceapi.ResourceClaim // by number of devices
	ids    []string                           // the GPUs' PCI addresses, the device plugin's device IDs
	names  []string                           // the same GPUs' names in the ResourceSlice

	mu       sync.Mutex
	observed []time.Duration
}

func (b *draBench) observe(_ int, d time.Duration) {
	b.mu.Lock()
	b.observed = append(b.observed, d)
	b.mu.Unlock()
}

func (b *draBench) takeObserved() []time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.observed
	b.observed = nil
	return out
}

// serveDRA runs plinth's DRA driver for host under dir, with a fake
// clientset holding the Node (no device-plugin GPUs allocatable, so the
// driver starts at once) and an allocated claim of 1 and of 8 GPUs, and
// returns a client on its DRA socket; it stops with the test.
func serveDRA(t *testing.T, dir string, host device.Host, cfg device.Config) *draBench {
	t.Helper()
	inv := device.NewInventory(host, cfg)
	if _, _, err := inv.Scan(); err != nil {
		t.Fatal(err)
	}
	b := &draBench{claims: map[int]*resourceapi.ResourceClaim{}}
	var names []string
	for _, u := range inv.Units(cfg.Resources[0]) {
		names = append(names, dra.DeviceName(u.Device))
		b.ids = append(b.ids, u.Device.ID)
	}
	if len(names) != 8 {
		t.Fatalf("the fixture has %d GPUs, want 8", len(names))
	}
	b.names = names
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: draBenchNode, UID: "node-a-uid"}}
	node.Status.Allocatable = v1.ResourceList{v1.ResourceCPU: resource.MustParse("64")}
	client := fake.NewClientset(node)
	b.client = client
	for _, n := range []int{1, 8} {
		c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("gpus-%d", n),
			UID: types.UID(fmt.Sprintf("0d1b0c4e-0000-4000-8000-%012d", n))}}
		c.Status.Allocation = &resourceapi.AllocationResult{}
		for _, name := range names[:n] {
			c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
				Request: "gpus", Driver: draBenchDriver, Pool: draBenchNode, Device: name})
		}
		if _, err := client.ResourceV1().ResourceClaims(c.Namespace).Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		b.claims[n] = c
	}
	kubeletDir := filepath.Join(dir, "k")
	drv, err := dra.New(dra.Config{DriverName: draBenchDriver, NodeName: draBenchNode, KubeletDir: kubeletDir, StateDir: filepath.Join(dir, "st"),
		CDIDir: filepath.Join(dir, "cdi"), DevRoot: host.Dev, Resources: cfg.Resources, Inventory: inv, Client: client,
		HandoverPoll: 20 * time.Millisecond, ObservePrepare: b.observe})
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
			t.Errorf("DRA driver: %v", err)
		}
	})
	sock := filepath.Join(kubeletDir, "plugins", draBenchDriver+"-dra", "dra.sock")
	for i := 0; i < 1000; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	b.c = drapb.NewDRAPluginClient(conn)
	return b
}

// fsName names the filesystem dir is on, for the table's header.
func fsName(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "?"
	}
	switch st.Type {
	case 0x01021994:
		return "tmpfs"
	case 0xef53:
		return "ext4"
	case 0x58465342:
		return "xfs"
	case 0x9123683e:
		return "btrfs"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("filesystem 0x%x", st.Type)
}
