package kubelet

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	dpapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// DevicePluginDir is where the kubelet serves kubelet.sock and device
// plugins put their sockets.
func DevicePluginDir(kubeletDir string) string {
	return filepath.Join(kubeletDir, "device-plugins")
}

// KubeletSocket is the kubelet's device-plugin Registration socket.
func KubeletSocket(kubeletDir string) string {
	return filepath.Join(DevicePluginDir(kubeletDir), filepath.Base(dpapi.KubeletSocket))
}

// quickRedial dials the kubelet again within milliseconds, not after
// gRPC's default first backoff of a second: a restarting kubelet creates
// its socket file (bind) before it listens on it, and plinth, woken by the
// file's creation, dials in between and is refused. A refused dial is a
// cheap connect(2): try again every 20 ms at the most, for the call's 10 s.
func quickRedial() grpc.ConnectParams {
	return grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 20 * time.Millisecond},
		MinConnectTimeout: 5 * time.Second,
	}
}

// RegisterDevicePlugin tells the kubelet at kubeletSock that resource is
// served on endpoint (a socket file name in the device-plugin directory).
func RegisterDevicePlugin(ctx context.Context, kubeletSock, endpoint, resource string, opts *dpapi.DevicePluginOptions) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+kubeletSock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(quickRedial()))
	if err != nil {
		return fmt.Errorf("connect to kubelet at %s: %w", kubeletSock, err)
	}
	defer conn.Close()
	_, err = dpapi.NewRegistrationClient(conn).Register(ctx, &dpapi.RegisterRequest{
		Version: dpapi.Version, Endpoint: endpoint, ResourceName: resource, Options: opts,
	}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("register %s with kubelet: %w", resource, err)
	}
	return nil
}
