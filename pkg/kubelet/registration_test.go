package kubelet

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

func TestCSIRegistration(t *testing.T) {
	dir := t.TempDir()
	endpoint := filepath.Join(dir, "csi.sock")
	r := NewCSIRegistration("plinth.example.com", endpoint)
	var heard []bool
	r.OnStatus = func(ok bool, _ string) { heard = append(heard, ok) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, dir) }()

	// No registration socket until the CSI endpoint listens.
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(r.SocketPath(dir)); err == nil {
		t.Fatal("registration socket served before the CSI endpoint was up")
	}
	l, err := net.Listen("unix", endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var fi os.FileInfo
	for i := 0; i < 300; i++ {
		if fi, err = os.Stat(r.SocketPath(dir)); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("registration socket %v %v", fi, err)
	}
	conn, err := grpc.NewClient("unix://"+r.SocketPath(dir), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := registerapi.NewRegistrationClient(conn)
	info, err := c.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil || info.Type != registerapi.CSIPlugin || info.Name != "plinth.example.com" || info.Endpoint != endpoint {
		t.Fatalf("GetInfo = %+v, %v", info, err)
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil || !r.Registered() || len(heard) != 1 {
		t.Fatalf("notify: %v registered=%v heard=%v", err, r.Registered(), heard)
	}
	cancel()
	<-done
	if _, err := os.Stat(r.SocketPath(dir)); err == nil {
		t.Error("registration socket left behind")
	}
}
