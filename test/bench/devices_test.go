package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	dpapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/deviceplugin"
	"github.com/plinth-dev/plinth/pkg/kubelet"
)

// TestBenchDevices measures the device plugin over its real socket on the
// 8-GPU fixture: Allocate latency for 1 and 8 devices, and the time from a
// device node vanishing (or returning) to the ListAndWatch update.
func TestBenchDevices(t *testing.T) {
	if os.Getenv(benchEnv) == "" {
		t.Skip("benchmarks run with `make bench` (" + benchEnv + "=1)")
	}
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS("../../testdata/devices/nvidia-8gpu")); err != nil {
		t.Fatal(err)
	}
	host := device.Host{Sysfs: filepath.Join(dst, "sys"), Dev: filepath.Join(dst, "dev"), Proc: filepath.Join(dst, "proc")}
	cfg := device.DefaultConfig()
	cfg.Health.Interval = device.Duration{Duration: 10 * time.Second} // changes arrive by fsnotify, not the tick
	cfg.Health.RecoverAfter = device.Duration{Duration: time.Millisecond}
	cfg.Defaults()
	c, stream := servePlugin(t, host, cfg)
	ctx := context.Background()
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	all := []string{"0000:18:00.0", "0000:1a:00.0", "0000:3b:00.0", "0000:3d:00.0", "0000:9a:00.0", "0000:9c:00.0", "0000:bb:00.0", "0000:bd:00.0"}
	var b strings.Builder
	fmt.Fprintf(&b, "\nDevice plugin over its unix socket, 8-GPU fixture (DGX-H100-like)\n%-34s %8s %10s %10s %9s\n", "operation", "samples", "p50", "p99", "vs 1 dev")
	var base time.Duration
	for _, n := range []int{1, 8} {
		var lat []time.Duration
		for i := 0; i < 2000; i++ {
			t0 := time.Now()
			if _, err := c.Allocate(ctx, &dpapi.AllocateRequest{ContainerRequests: []*dpapi.ContainerAllocateRequest{{DevicesIds: all[:n]}}}); err != nil {
				t.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		p50 := pct(lat, 0.5)
		if n == 1 {
			base = p50
		}
		fmt.Fprintf(&b, "%-34s %8d %10s %10s %8.2fx\n", fmt.Sprintf("Allocate, %d device(s)", n), len(lat), p50.Round(time.Microsecond), pct(lat, 0.99).Round(time.Microsecond), float64(p50)/float64(base))
	}
	var lost, back []time.Duration
	node := filepath.Join(host.Dev, "nvidia3")
	for i := 0; i < 30; i++ {
		t0 := time.Now()
		os.Remove(node)
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		lost = append(lost, time.Since(t0))
		t0 = time.Now()
		os.WriteFile(node, nil, 0o644)
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		back = append(back, time.Since(t0))
	}
	fmt.Fprintf(&b, "%-34s %8d %10s %10s\n", "node removed → ListAndWatch update", len(lost), pct(lost, 0.5).Round(time.Microsecond), pct(lost, 0.99).Round(time.Microsecond))
	fmt.Fprintf(&b, "%-34s %8d %10s %10s   (recoverAfter 1ms; default 10s)\n", "node back → ListAndWatch update", len(back), pct(back, 0.5).Round(time.Microsecond), pct(back, 0.99).Round(time.Microsecond))
	fmt.Print(b.String())
}

// servePlugin runs plinth's inventory and device plugins for host and
// returns a client on the first resource's socket with its ListAndWatch
// stream open; both stop with the test.
func servePlugin(t *testing.T, host device.Host, cfg device.Config) (dpapi.DevicePluginClient, dpapi.DevicePlugin_ListAndWatchClient) {
	t.Helper()
	inv := device.NewInventory(host, cfg)
	if _, _, err := inv.Scan(); err != nil { // as plinth node does before serving
		t.Fatal(err)
	}
	kdir := t.TempDir()
	mgr, err := deviceplugin.NewManager(deviceplugin.Config{KubeletDir: kdir, DevRoot: host.Dev}, cfg.Resources, inv)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go inv.Run(ctx)
	go mgr.Run(ctx)
	sock := filepath.Join(kubelet.DevicePluginDir(kdir), deviceplugin.SocketName(cfg.Resources[0]))
	for i := 0; i < 500; i++ {
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
	c := dpapi.NewDevicePluginClient(conn)
	stream, err := c.ListAndWatch(ctx, &dpapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	return c, stream
}
