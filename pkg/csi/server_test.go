package csi

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// TestServeShutdown stops a server while a call is in flight, as a rolling
// update's SIGTERM does: the call in flight finishes with its real answer,
// a call that arrives meanwhile, on the open connection or a new one, is
// answered UNAVAILABLE at once (the kubelet retries that), and the socket
// is gone when Serve returns.
func TestServeShutdown(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "csi.sock")
	entered, release := make(chan struct{}), make(chan struct{})
	ready := func(context.Context) error {
		close(entered)
		<-release
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, sock, Services{Identity: NewIdentityServer("plinth.test", "v0", false, ready)}, time.Minute)
	}()

	dial := func() csi.IdentityClient {
		t.Helper()
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return csi.NewIdentityClient(conn)
	}
	old := dial()
	// The server is up once a call on the connection answers.
	callCtx, callCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer callCancel()
	if _, err := old.GetPluginInfo(callCtx, &csi.GetPluginInfoRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("GetPluginInfo before shutdown: %v", err)
	}

	type answer struct {
		resp *csi.ProbeResponse
		err  error
	}
	inFlight := make(chan answer, 1)
	go func() {
		resp, err := old.Probe(callCtx, &csi.ProbeRequest{})
		inFlight <- answer{resp, err}
	}()
	<-entered
	cancel() // SIGTERM

	// Shutdown has begun once the socket is gone (the listener is closed
	// first).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Lstat(sock); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket still there 10s after cancel")
		}
	}

	for name, c := range map[string]csi.IdentityClient{"open connection": old, "new connection": dial()} {
		// A hang would run into the deadline: DeadlineExceeded, not Unavailable.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if status.Code(err) != codes.Unavailable {
			t.Errorf("call during shutdown on the %s: %v, want code Unavailable", name, err)
		}
	}

	select {
	case err := <-served:
		t.Fatalf("Serve returned %v with a call in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	got := <-inFlight
	if got.err != nil || !got.resp.GetReady().GetValue() {
		t.Errorf("call in flight at shutdown: %v, %v; want ready", got.resp, got.err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return 10s after the last call finished")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after Serve returned: %v, want it removed", err)
	}
}
