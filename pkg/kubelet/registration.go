package kubelet

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/plinth-dev/plinth/pkg/unixsock"
)

// PluginsRegistryDir is where the kubelet's plugin watcher looks for
// registration sockets.
func PluginsRegistryDir(kubeletDir string) string {
	return filepath.Join(kubeletDir, "plugins_registry")
}

// CSIRegistration answers the kubelet's plugin watcher for a CSI driver:
// the kubelet finds the socket in plugins_registry, asks GetInfo, connects
// to the CSI endpoint, and reports the outcome. No node-driver-registrar.
type CSIRegistration struct {
	registerapi.UnimplementedRegistrationServer
	driver, endpoint string
	registered       atomic.Bool
	// OnStatus, when set, hears every status the kubelet reports.
	OnStatus func(registered bool, err string)
}

var _ registerapi.RegistrationServer = (*CSIRegistration)(nil)

// NewCSIRegistration describes driver served on the CSI socket endpoint.
func NewCSIRegistration(driver, endpoint string) *CSIRegistration {
	return &CSIRegistration{driver: driver, endpoint: endpoint}
}

// GetInfo tells the kubelet what plugin this is and where it is served.
func (r *CSIRegistration) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.driver, Endpoint: r.endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

// NotifyRegistrationStatus records what the kubelet made of the plugin.
func (r *CSIRegistration) NotifyRegistrationStatus(ctx context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	r.registered.Store(s.PluginRegistered)
	if r.OnStatus != nil {
		r.OnStatus(s.PluginRegistered, s.Error)
	}
	if s.PluginRegistered {
		klog.InfoS("Kubelet registered the CSI driver", "driver", r.driver, "endpoint", r.endpoint)
	} else {
		klog.ErrorS(nil, "Kubelet refused the CSI driver", "driver", r.driver, "error", s.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Registered reports whether the kubelet said it registered the driver.
func (r *CSIRegistration) Registered() bool { return r.registered.Load() }

// SocketPath is the registration socket of r under kubeletDir.
func (r *CSIRegistration) SocketPath(kubeletDir string) string {
	return filepath.Join(PluginsRegistryDir(kubeletDir), r.driver+"-reg.sock")
}

// waitForEndpoint waits until the CSI socket accepts connections: the
// kubelet connects to it as soon as it sees the registration socket.
func (r *CSIRegistration) waitForEndpoint(ctx context.Context) error {
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, time.Second) {
		if c, err := net.Dial("unix", r.endpoint); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// Serve serves the registration socket, once the CSI endpoint is up, until
// ctx ends (then removes it, if it is still the one it made). A stale socket
// is replaced, one a live server answers on is refused; the socket is for
// its owner only.
func (r *CSIRegistration) Serve(ctx context.Context, kubeletDir string) error {
	if err := r.waitForEndpoint(ctx); err != nil {
		return nil // stopped before CSI came up
	}
	path := r.SocketPath(kubeletDir)
	l, err := unixsock.Listen(path, 0o600)
	if err != nil {
		return err
	}
	defer l.Close() // removes the socket, if it is still ours
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, r)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	klog.InfoS("Serving kubelet plugin registration", "socket", path, "driver", r.driver)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	return nil
}
