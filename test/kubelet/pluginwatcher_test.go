package kubelet

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/tools/record"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
	"k8s.io/kubernetes/pkg/kubelet/pluginmanager"
	"k8s.io/kubernetes/pkg/volume/csi"

	"github.com/plinth-dev/plinth/pkg/app"
	plinthkubelet "github.com/plinth-dev/plinth/pkg/kubelet"
)

// csiHandler is the kubelet's CSI plugin handler up to the point where the
// real one needs an API server: validation is the kubelet's own
// (csi.PluginHandler.ValidatePlugin); registration connects to the
// advertised endpoint and asks NodeGetInfo, as the kubelet does next.
type csiHandler struct {
	mu       sync.Mutex
	nodeInfo chan *csipb.NodeGetInfoResponse
}

func (h *csiHandler) ValidatePlugin(ctx context.Context, name, endpoint string, versions []string) error {
	return csi.PluginHandler.ValidatePlugin(ctx, name, endpoint, versions)
}

func (h *csiHandler) RegisterPlugin(ctx context.Context, name, endpoint string, versions []string, _ *time.Duration) error {
	conn, err := grpc.NewClient("unix://"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	info, err := csipb.NewNodeClient(conn).NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil {
		return err
	}
	h.nodeInfo <- info
	return nil
}

func (h *csiHandler) DeRegisterPlugin(context.Context, string, string) {}

// TestKubeletPluginWatcherRegistersCSI runs plinth node and the kubelet's
// plugin manager (plugin watcher and reconciler) on one kubelet directory:
// the kubelet finds plinth's socket in plugins_registry, validates it with
// the kubelet's CSI rules, reaches the CSI endpoint, and tells plinth it is
// registered.
func TestKubeletPluginWatcherRegistersCSI(t *testing.T) {
	kubeletDir := t.TempDir()
	root := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	cfg := app.NodeConfig{CSI: true, KubeletDir: kubeletDir, ProcRoot: "/proc", CDIDir: ""}
	cfg.CSIConfig = app.CSIConfig{Root: root, NodeID: "node-7", DriverName: "plinth.example.com",
		TopologyKey: "topology.plinth.example.com/node", SysfsRoot: "/sys", DevRoot: "/dev", MetricsAddress: metricsAddr}
	type regStatus struct {
		ok  bool
		err string
	}
	status := make(chan regStatus, 4)
	cfg.OnKubeletRegistration = func(ok bool, err string) { status <- regStatus{ok, err} }
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.RunNode(ctx, cfg) }()
	t.Cleanup(func() { cancel(); <-done })

	// Not ready before the kubelet has registered the driver.
	if code, body := readyz(t, metricsAddr); code != 503 || !strings.Contains(body, "kubelet-csi-registration") {
		t.Fatalf("/readyz before registration: %d %s", code, body)
	}
	h := &csiHandler{nodeInfo: make(chan *csipb.NodeGetInfoResponse, 4)}
	pm := pluginmanager.NewPluginManager(plinthkubelet.PluginsRegistryDir(kubeletDir), record.NewFakeRecorder(16))
	pm.AddHandler(registerapi.CSIPlugin, h)
	stop := make(chan struct{})
	defer close(stop)
	start := time.Now()
	go pm.Run(ctx, ready{}, stop)

	select {
	case info := <-h.nodeInfo:
		if info.GetNodeId() != "node-7" || info.GetAccessibleTopology().GetSegments()["topology.plinth.example.com/node"] != "node-7" {
			t.Fatalf("NodeGetInfo through the advertised endpoint: %+v", info)
		}
		t.Logf("kubelet plugin manager registered plinth's CSI driver %v after start", time.Since(start))
	case <-time.After(30 * time.Second):
		t.Fatal("the kubelet's plugin manager did not register plinth within 30s")
	}
	select {
	case st := <-status:
		if !st.ok {
			t.Fatalf("the kubelet reported the registration as failed: %s", st.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("plinth never heard NotifyRegistrationStatus from the kubelet")
	}
	if code, body := readyz(t, metricsAddr); code != 200 {
		t.Fatalf("/readyz after registration: %d %s", code, body)
	}
	sock := filepath.Join(plinthkubelet.PluginsRegistryDir(kubeletDir), "plinth.example.com-reg.sock")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("registration socket %v %v: want owner-only", fi, err)
	}
}

func readyz(t *testing.T, addr string) (int, string) {
	t.Helper()
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			if i < 300 {
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
