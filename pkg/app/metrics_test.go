package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	for i := 0; ; i++ {
		resp, err := http.Get(url)
		if err != nil {
			if i < 200 {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
}

// TestStandaloneMetrics: after CSI calls, /metrics shows the calls by
// method and code with latency histograms, and the pools; /healthz and
// /readyz answer.
func TestStandaloneMetrics(t *testing.T) {
	root := t.TempDir()
	addr := freeAddr(t)
	cfg := StandaloneConfig{CSIConfig: CSIConfig{Root: root, NodeID: "n1", DriverName: "plinth.example.com",
		TopologyKey: "topology.plinth.example.com/node", SysfsRoot: "/sys", DevRoot: "/dev", MetricsAddress: addr}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunStandalone(ctx, cfg) }()
	t.Cleanup(func() { cancel(); <-done })

	if code, body := get(t, "http://"+addr+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d %s", code, body)
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(root, "csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id := csipb.NewIdentityClient(conn)
	for i := 0; i < 3; i++ {
		if _, err := id.GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	ctrl := csipb.NewControllerClient(conn)
	if _, err := ctrl.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: "../x"}); err == nil {
		t.Fatal("bad ID accepted")
	}
	if code, body := get(t, "http://"+addr+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d %s", code, body)
	}
	_, body := get(t, "http://"+addr+"/metrics")
	for _, want := range []string{
		`plinth_csi_operations_total{code="OK",method="GetPluginInfo"} 3`,
		`plinth_csi_operations_total{code="InvalidArgument",method="DeleteVolume"} 1`,
		`plinth_csi_operation_duration_seconds_bucket{code="OK",method="GetPluginInfo",le="+Inf"} 3`,
		`plinth_pool_allocatable_bytes{backend="file",pool="default"}`,
		`plinth_pool_size_bytes{backend="file",pool="default"}`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestNodeDeviceMetrics: plinth node --csi=false on the 8-GPU fixture shows
// its devices in /metrics and is not ready while no kubelet registered it.
func TestNodeDeviceMetrics(t *testing.T) {
	fx := "../../testdata/devices/nvidia-8gpu"
	addr := freeAddr(t)
	cfg := NodeConfig{Devices: true, KubeletDir: t.TempDir(), ProcRoot: filepath.Join(fx, "proc")}
	cfg.CSIConfig = CSIConfig{SysfsRoot: filepath.Join(fx, "sys"), DevRoot: filepath.Join(fx, "dev"), MetricsAddress: addr, Root: t.TempDir(),
		NodeID: "n1", DriverName: "plinth.example.com", TopologyKey: "k"}
	abs := func(p *string) { *p, _ = filepath.Abs(*p) }
	abs(&cfg.ProcRoot)
	abs(&cfg.SysfsRoot)
	abs(&cfg.DevRoot)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunNode(ctx, cfg) }()
	t.Cleanup(func() { cancel(); <-done })
	if code, body := get(t, "http://"+addr+"/readyz"); code != 503 || !strings.Contains(body, "device-plugins") {
		t.Fatalf("/readyz without a kubelet: %d %s", code, body)
	}
	_, body := get(t, "http://"+addr+"/metrics")
	for _, want := range []string{
		`plinth_devices{health="healthy",resource="example.com/gpu"} 8`,
		`plinth_devices{health="unhealthy",resource="example.com/gpu"} 0`,
		`plinth_device_health_transitions_total 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
