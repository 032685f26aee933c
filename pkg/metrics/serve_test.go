package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
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
	go func() { done <- m.ServeWhenFree(ctx, addr, nil) }()
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
	if err := New().ServeWhenFree(ctx, held.Addr().String(), nil); err != nil {
		t.Errorf("stopped while waiting: %v", err)
	}
	// Handed over, and the address still held 2 s later: another
	// program's, an error naming it.
	handed := make(chan struct{})
	close(handed)
	start := time.Now()
	if err := New().ServeWhenFree(context.Background(), held.Addr().String(), handed); err == nil || !strings.Contains(err.Error(), held.Addr().String()) {
		t.Errorf("address held after the handover: %v, want an error naming it", err)
	} else if d := time.Since(start); d < 2*time.Second || d > 5*time.Second {
		t.Errorf("address held after the handover: failed after %s, want about 2 s", d)
	}
	// The health socket serves the checks and nothing else.
	sock := filepath.Join(t.TempDir(), "h", "health.sock")
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go New().ServeUnix(ctx, sock)
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 404} {
		var resp *http.Response
		for i := 0; i < 200; i++ {
			if resp, err = c.Get("http://h" + path); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("health socket %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	// An address that cannot be had for another reason fails at once.
	if err := New().ServeWhenFree(context.Background(), "203.0.113.1:1", nil); err == nil {
		t.Errorf("an address not on this machine: served")
	}
}

// Go's profiles are served only when asked for (--profiling): a metrics
// address reachable by others does not hand out heap contents or stacks.
func TestProfilingOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		m := New()
		m.Profiling = on
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
			rec := httptest.NewRecorder()
			m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			if got := rec.Code == http.StatusOK; got != on {
				t.Errorf("Profiling=%v: GET %s answered %d", on, path, rec.Code)
			}
		}
	}
}
