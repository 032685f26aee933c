package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
	dpapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/test/testenv"
)

var scaleVolumes = flag2int("PLINTH_SCALE_VOLUMES", 1000)

func flag2int(env string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(env)); err == nil && n > 0 {
		return n
	}
	return def
}

// rssKiB reads a process's resident set size.
func rssKiB(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// workers runs f(i) for i < n on 8 workers and returns each call's latency.
func workers(n int, f func(i int) error) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, n)
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	start := time.Now()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				t0 := time.Now()
				if err := f(i); err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	return lat, time.Since(start), first
}

// TestBenchScale: a real plinth process with 1000 volumes in one pool.
func TestBenchScale(t *testing.T) {
	if os.Getenv(benchEnv) == "" {
		t.Skip("benchmarks run with `make bench` (" + benchEnv + "=1)")
	}
	testenv.RequireHost(t)
	backing := testenv.Filesystem(t, "xfs", 64<<30)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(backing, "pool"), 0o700) // plinth refuses a missing pool directory
	sock := filepath.Join(root, "csi.sock")
	args := []string{"--endpoint", "unix://" + sock, "--root", filepath.Join(root, "state"), "--allowed-path", root, "--metrics-address", "127.0.0.1:0",
		"--pool", "name=scale,backend=file,dir=" + filepath.Join(backing, "pool")}
	logf, _ := os.Create(filepath.Join(root, "plinth.log"))
	cmd := testenv.StartChild(t, sock, args, logf)
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	c := testenv.Dial(t, sock)
	ctx := context.Background()
	n := scaleVolumes
	time.Sleep(200 * time.Millisecond)
	rss0 := rssKiB(cmd.Process.Pid)

	ids := make([]string, n)
	createLat, createTotal, err := workers(n, func(i int) error {
		r, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("scale-%04d", i), CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{testenv.BlockCap()}})
		ids[i] = r.GetVolume().GetVolumeId()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	pages, listed := 0, 0
	for token := ""; ; pages++ {
		r, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 100, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		listed += len(r.GetEntries())
		if token = r.GetNextToken(); token == "" {
			pages++
			break
		}
	}
	listTotal := time.Since(t0)
	if listed != n {
		t.Fatalf("listed %d of %d", listed, n)
	}
	getLat, getTotal, err := workers(n, func(i int) error {
		_, err := c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: ids[i]})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	capLat, _, _ := workers(100, func(int) error {
		_, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{})
		return err
	})
	rssN := rssKiB(cmd.Process.Pid)

	// Restart with n volumes on disk: time until the socket answers and a
	// full list is served.
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	t0 = time.Now()
	cmd = testenv.StartChild(t, sock, args, logf)
	c = testenv.Dial(t, sock)
	r, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(r.GetEntries()) != n {
		t.Fatalf("after restart: %d volumes, %v", len(r.GetEntries()), err)
	}
	startup := time.Since(t0)
	delLat, delTotal, err := workers(n, func(i int) error {
		_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[i]})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nScale: %d block volumes of 16 MiB in one file pool (xfs), a real plinth process, 8 concurrent clients\n", n)
	fmt.Fprintf(&b, "%-36s %12s %10s %10s\n", "operation", "total", "p50", "p99")
	row := func(name string, total time.Duration, lat []time.Duration) {
		fmt.Fprintf(&b, "%-36s %12s %10s %10s\n", name, total.Round(time.Millisecond), pct(lat, 0.5).Round(time.Microsecond), pct(lat, 0.99).Round(time.Microsecond))
	}
	row(fmt.Sprintf("create %d", n), createTotal, createLat)
	row(fmt.Sprintf("list, %d pages of 100", pages), listTotal, nil)
	row(fmt.Sprintf("get (ControllerGetVolume) %d", n), getTotal, getLat)
	row("GetCapacity (100 calls)", 0, capLat)
	row(fmt.Sprintf("delete %d", n), delTotal, delLat)
	fmt.Fprintf(&b, "%-36s %12s\n", fmt.Sprintf("start-up with %d volumes on disk", n), startup.Round(time.Millisecond))
	fmt.Fprintf(&b, "%-36s %9d KiB\n%-36s %9d KiB (%.2fx)\n", "resident memory, 0 volumes", rss0, fmt.Sprintf("resident memory, %d volumes", n), rssN, float64(rssN)/float64(rss0))
	b.WriteString(deviceScale(t))
	fmt.Print(b.String())
}

// deviceScale builds a 256-GPU sysfs (32 PCIe switches of 8, 2 NUMA nodes)
// and measures the device plugin over its socket.
func deviceScale(t *testing.T) string {
	dir := t.TempDir()
	host := device.Host{Sysfs: filepath.Join(dir, "sys"), Dev: filepath.Join(dir, "dev"), Proc: filepath.Join(dir, "proc")}
	write := func(p, s string) { os.MkdirAll(filepath.Dir(p), 0o755); os.WriteFile(p, []byte(s), 0o644) }
	link := func(target, p string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		rel, _ := filepath.Rel(filepath.Dir(p), target)
		os.Symlink(rel, p)
	}
	drv := filepath.Join(host.Sysfs, "bus", "pci", "drivers", "nvidia")
	os.MkdirAll(drv, 0o755)
	for _, n := range []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"} {
		write(filepath.Join(host.Dev, n), "")
	}
	minor := 0
	var all []string
	for s := 0; s < 32; s++ {
		dom := fmt.Sprintf("%04x", s)
		p := filepath.Join(host.Sysfs, "devices", "pci"+dom+":00", dom+":00:01.0", dom+":01:00.0")
		for g := 0; g < 8; g++ {
			bdf := fmt.Sprintf("%s:%02x:00.0", dom, 0x10+g)
			d := filepath.Join(p, fmt.Sprintf("%s:02:%02x.0", dom, g), bdf)
			write(filepath.Join(d, "class"), "0x030200\n")
			write(filepath.Join(d, "vendor"), "0x10de\n")
			write(filepath.Join(d, "device"), "0x2330\n")
			write(filepath.Join(d, "numa_node"), strconv.Itoa(s/16)+"\n")
			link(drv, filepath.Join(d, "driver"))
			link(d, filepath.Join(host.Sysfs, "bus", "pci", "devices", bdf))
			write(filepath.Join(host.Proc, "driver", "nvidia", "gpus", bdf, "information"), fmt.Sprintf("Device Minor: \t %d\n", minor))
			write(filepath.Join(host.Dev, fmt.Sprintf("nvidia%d", minor)), "")
			all = append(all, bdf)
			minor++
		}
	}
	cfg := device.DefaultConfig()
	cfg.Defaults()
	t0 := time.Now()
	if _, _, err := device.NewInventory(host, cfg).Scan(); err != nil {
		t.Fatal(err)
	}
	scan := time.Since(t0)
	c, stream := servePlugin(t, host, cfg)
	ctx := context.Background()
	first, err := stream.Recv()
	if err != nil || len(first.Devices) != 256 {
		t.Fatalf("ListAndWatch: %d devices, %v", len(first.Devices), err)
	}
	var alloc, prefer []time.Duration
	for i := 0; i < 1000; i++ {
		t0 := time.Now()
		if _, err := c.Allocate(ctx, &dpapi.AllocateRequest{ContainerRequests: []*dpapi.ContainerAllocateRequest{{DevicesIds: all[(i%32)*8 : (i%32)*8+8]}}}); err != nil {
			t.Fatal(err)
		}
		alloc = append(alloc, time.Since(t0))
		t0 = time.Now()
		if _, err := c.GetPreferredAllocation(ctx, &dpapi.PreferredAllocationRequest{ContainerRequests: []*dpapi.ContainerPreferredAllocationRequest{{AvailableDeviceIDs: all[i%7:], AllocationSize: 8}}}); err != nil {
			t.Fatal(err)
		}
		prefer = append(prefer, time.Since(t0))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nScale: 256 GPUs in a fixture tree (32 PCIe switches of 8, 2 NUMA nodes)\n")
	fmt.Fprintf(&b, "%-36s %12s\n", "discovery scan", scan.Round(time.Microsecond))
	fmt.Fprintf(&b, "%-36s %9d bytes\n", "ListAndWatch message", proto.Size(first))
	fmt.Fprintf(&b, "%-36s %12s %10s %10s\n", "Allocate, 8 devices (1000 calls)", "", pct(alloc, 0.5).Round(time.Microsecond), pct(alloc, 0.99).Round(time.Microsecond))
	fmt.Fprintf(&b, "%-36s %12s %10s %10s\n", "GetPreferredAllocation, 8 of ~250", "", pct(prefer, 0.5).Round(time.Microsecond), pct(prefer, 0.99).Round(time.Microsecond))
	return b.String()
}
