package app

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// handoverNode is a plinth node serving CSI over one file pool (no
// cluster, no devices) with a health socket, on a root of its own.
func handoverNode(t *testing.T, wait time.Duration) NodeConfig {
	t.Helper()
	tmp := t.TempDir()
	kubelet := filepath.Join(tmp, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "plugins_registry"), 0o750); err != nil {
		t.Fatal(err)
	}
	cfg := NodeConfig{CSI: true, KubeletDir: kubelet, ProcRoot: "/proc", WaitForRoot: wait,
		HealthSocket: filepath.Join(tmp, "health", "health.sock")}
	cfg.CSIConfig = CSIConfig{Root: filepath.Join(tmp, "root"), NodeID: "n1", DriverName: "plinth.example.com", TopologyKey: "k",
		SysfsRoot: "/sys", DevRoot: "/dev", MetricsAddress: freeAddr(t),
		Pools: []PoolSpec{{Name: "p", Backend: "file", Dir: filepath.Join(tmp, "root", "pools", "p")}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// startNode runs RunNode(cfg) until stop (or the test's end) and returns
// once its health socket is there; done is closed when RunNode returns,
// and stop cancels it and returns what RunNode returned.
func startNode(t *testing.T, cfg NodeConfig) (done <-chan struct{}, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	var err error
	go func() { err = RunNode(ctx, cfg); close(finished) }()
	stop = func() error { cancel(); <-finished; return err }
	t.Cleanup(func() { stop() })
	waitFor(t, func() bool { return exists(cfg.HealthSocket) })
	return finished, stop
}

// A node that replaces another on the same root (a surge rolling update)
// serves its health while it waits, touches nothing of the root's and
// serves no CSI socket until the holder lets go; then it takes over.
func TestNodeWaitsForRoot(t *testing.T) {
	cfg := handoverNode(t, time.Minute)
	held, err := LockRoot(cfg.Root)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	sock := strings.TrimPrefix(cfg.Endpoint, "unix://")
	done, stop := startNode(t, cfg)
	if err := Probe(context.Background(), cfg.HealthSocket, "/healthz"); err != nil {
		t.Fatalf("the waiting node's health socket: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	select {
	case <-done:
		t.Fatalf("RunNode returned while another process held the root: %v", stop())
	default:
	}
	if exists(sock) {
		t.Fatalf("CSI socket %s served while another process holds the root", sock)
	}
	if exists(filepath.Join(cfg.Root, "pools", "p")) {
		t.Errorf("the waiting node made the pool directory under a root it does not hold")
	}
	start := time.Now()
	held.Unlock()
	waitFor(t, func() bool { return exists(sock) })
	t.Logf("CSI socket served %s after the root was let go", time.Since(start).Round(time.Millisecond))
	if l, err := LockRoot(cfg.Root); err == nil {
		l.Unlock()
		t.Errorf("the root is free after the node took it over")
	}
	if err := stop(); err != nil {
		t.Errorf("RunNode after cancel: %v", err)
	}
	if exists(cfg.HealthSocket) {
		t.Errorf("health socket %s left behind", cfg.HealthSocket)
	}
}

// Without --wait-for-root a held root is refused at once, as before; with
// it, after the wait, naming how long it waited and who holds it; stopped
// while it waits, the node returns nil and leaves nothing behind.
func TestNodeWaitForRootLimits(t *testing.T) {
	for _, tc := range []struct {
		wait   time.Duration
		cancel bool
		want   string
	}{
		{wait: 0, want: "in use by another plinth process"},
		{wait: 300 * time.Millisecond, want: "waited 300ms for the root (--wait-for-root): root "},
		{wait: time.Minute, cancel: true},
	} {
		cfg := handoverNode(t, tc.wait)
		held, err := LockRoot(cfg.Root)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if tc.cancel {
			time.AfterFunc(300*time.Millisecond, cancel)
		}
		start := time.Now()
		err = RunNode(ctx, cfg)
		cancel()
		held.Unlock()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("wait %s, stopped: %v, want nil", tc.wait, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrRootBusy)):
			t.Errorf("wait %s: %v, want an ErrRootBusy saying %q", tc.wait, err, tc.want)
		}
		if took := time.Since(start); took > tc.wait+5*time.Second {
			t.Errorf("wait %s: returned after %s", tc.wait, took)
		}
		if exists(cfg.HealthSocket) || exists(strings.TrimPrefix(cfg.Endpoint, "unix://")) {
			t.Errorf("wait %s: a socket left behind", tc.wait)
		}
		if c, err := net.Dial("tcp", cfg.MetricsAddress); err == nil {
			c.Close()
			t.Errorf("wait %s: metrics still served after RunNode returned", tc.wait)
		}
	}
}

// A waiting node that finds the root taken by something else than the lock
// (a pool directory another root's plinth holds) fails at once: only a busy
// root is worth waiting for.
func TestWaitRootOnlyForBusyRoot(t *testing.T) {
	calls := 0
	other := errors.New("pool p: in use")
	_, err := WaitRoot(context.Background(), time.Minute, func() (*RootLock, error) { calls++; return nil, other })
	if !errors.Is(err, other) || calls != 1 {
		t.Errorf("WaitRoot on another error: %v after %d calls, want it at once", err, calls)
	}
}

// plinth probe: ok on 200; a failing check is named; only the two paths.
func TestProbe(t *testing.T) {
	cfg := handoverNode(t, 0)
	startNode(t, cfg)
	if err := Probe(context.Background(), cfg.HealthSocket, "/healthz"); err != nil {
		t.Errorf("/healthz: %v", err)
	}
	// CSI served: its readiness check is in.
	waitFor(t, func() bool { return exists(strings.TrimPrefix(cfg.Endpoint, "unix://")) })
	// No kubelet registers the CSI driver here: not ready, and why.
	if err := Probe(context.Background(), cfg.HealthSocket, "/readyz"); err == nil || !strings.Contains(err.Error(), "kubelet-csi-registration") {
		t.Errorf("/readyz without a kubelet: %v, want the registration check named", err)
	}
	for _, p := range []string{"/metrics", "readyz", "/readyz/../metrics", ""} {
		if err := Probe(context.Background(), cfg.HealthSocket, p); err == nil {
			t.Errorf("probe %q: ok", p)
		}
	}
	if err := Probe(context.Background(), filepath.Join(t.TempDir(), "none.sock"), "/healthz"); err == nil {
		t.Errorf("probe of a socket nobody serves: ok")
	}
}
