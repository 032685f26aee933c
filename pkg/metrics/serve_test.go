package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// ServeWhenFree waits out the process that holds the address (the pod
// being replaced, on the host network) and serves as soon as it lets go.
func TestServeWhenFree(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := held.Addr().String()
	m := New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.ServeWhenFree(ctx, addr) }()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("ServeWhenFree returned while the address was held: %v", err)
	default:
	}
	held.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "ok\n" {
				t.Fatalf("/healthz: %d %q", resp.StatusCode, b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not served 5 s after the address was let go: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("after cancel: %v", err)
	}
	// Stopped while it waits: nil, at once.
	held, _ = net.Listen("tcp", "127.0.0.1:0")
	defer held.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := New().ServeWhenFree(ctx, held.Addr().String()); err != nil {
		t.Errorf("stopped while waiting: %v", err)
	}
	// An address that cannot be had for another reason fails at once.
	if err := New().ServeWhenFree(context.Background(), "203.0.113.1:1"); err == nil {
		t.Errorf("an address not on this machine: served")
	}
}
