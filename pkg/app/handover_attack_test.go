package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/deviceplugin"
	"github.com/plinth-dev/plinth/pkg/dra"
)

// Attacks on the surge handover (75a99e5): --health-socket, --wait-for-root,
// --pod-uid, plinth probe, from a tenant's and a careless administrator's
// seat. Each test says what an operator would expect.

// ---------------------------------------------------------------- probe

// fakeHealth serves h on a unix socket of its own.
func fakeHealth(t *testing.T, h http.Handler) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return p
}

// plinth probe's contract: exit 0 only when /healthz (/readyz) itself
// answers 200. A redirect is not that answer: the kubelet must not be told
// "ready" because /readyz pointed somewhere that says 200 (here /metrics,
// which always does). Go's client follows redirects by default, and the
// probe's dialer sends every host to the same socket.
func TestAttackProbeFollowsNoRedirect(t *testing.T) {
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		mux := http.NewServeMux()
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://elsewhere.example/metrics", code)
		})
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "# metrics") })
		sock := fakeHealth(t, mux)
		if err := Probe(context.Background(), sock, "/readyz"); err == nil {
			t.Errorf("/readyz answering %d (a redirect to /metrics): probe ok, want a failure", code)
		}
	}
}

// Paths other than exactly /healthz and /readyz are refused before any
// request; a body (huge, or never ending) does not change the verdict, and
// a server that never answers fails within the caller's deadline.
func TestAttackProbeOddPathsAndBodies(t *testing.T) {
	mux := http.NewServeMux()
	hits := 0
	var mu sync.Mutex
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		fmt.Fprintln(w, "ok")
	})
	sock := fakeHealth(t, mux)
	for _, p := range []string{"/readyz?x", "/healthz/../metrics", "/healthz#x", "//healthz", "/readyz/", "/READYZ", " /readyz", "/readyz\n", "http://x/readyz", "/healthz%2f..%2fmetrics"} {
		if err := Probe(context.Background(), sock, p); err == nil {
			t.Errorf("probe %q: ok", p)
		}
	}
	if hits != 0 {
		t.Errorf("odd paths reached the server %d times", hits)
	}
	// 503 with a huge body: a failure, and bounded.
	big := fakeHealth(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(503)
		chunk := strings.Repeat("x", 1<<16)
		for i := 0; i < 1024; i++ {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
	}))
	err := Probe(context.Background(), big, "/readyz")
	if err == nil || len(err.Error()) > 80<<10 {
		t.Errorf("503 with 64 MiB body: err len %d (%v)", len(fmt.Sprint(err)), err == nil)
	}
	// A server that accepts and never answers: the caller's deadline holds.
	hang := filepath.Join(t.TempDir(), "hang.sock")
	hl, err := net.Listen("unix", hang)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	go func() {
		for {
			c, err := hl.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := Probe(ctx, hang, "/healthz"); err == nil {
		t.Errorf("a server that never answers: ok")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("probe of a hung server took %s past a 300 ms deadline", took)
	}
}

// ------------------------------------------------------------ validation

// Flags of the handover that a careless administrator gets wrong are
// refused at start (exit 2), not found out at run time.
func TestAttackHandoverFlagsValidated(t *testing.T) {
	root := "/var/lib/plinth"
	csiSock := "/var/lib/kubelet/plugins/plinth.example.com/csi.sock"
	for name, tc := range map[string]struct {
		args []string
		want bool // want refused
	}{
		// Hold today.
		"negative --wait-for-root":        {[]string{"--root", root, "--wait-for-root=-1s"}, true},
		"relative --health-socket":        {[]string{"--root", root, "--metrics-address=:9809", "--health-socket=run/h.sock"}, true},
		"--health-socket without metrics": {[]string{"--root", root, "--metrics-address=", "--health-socket=/run/plinth/h.sock"}, true},
		"the chart's flags":               {[]string{"--root", root, "--metrics-address=:9809", "--health-socket=/run/plinth/health.sock", "--wait-for-root=5m", "--pod-uid=4f0c0a4e-9c51-4a0e-8d0b-1c2d3e4f5a6b"}, false},
		// --pod-uid ends up in socket file names (kubeletplugin:
		// <registry>/<driver>-<uid>-reg.sock, <data dir>/dra-<uid>.sock):
		// a slash walks out of the kubelet's directories.
		"--pod-uid with a slash":    {[]string{"--root", root, "--pod-uid=x/../../../../../tmp/evil"}, true},
		"--pod-uid with a dot-dot":  {[]string{"--root", root, "--pod-uid=.."}, true},
		"--pod-uid left unexpanded": {[]string{"--root", root, "--pod-uid=$(POD_UID)"}, true},
		"--pod-uid with a NUL":      {[]string{"--root", root, "--pod-uid=a\x00b"}, true},
		// The health socket is served before the root is held: on the
		// CSI socket's path it makes CSI fail ("a live server answers")
		// on every start; under --root it writes there before the lock.
		"--health-socket on the CSI socket": {[]string{"--root", root, "--metrics-address=:9809", "--health-socket=" + csiSock}, true},
		"--health-socket under --root":      {[]string{"--root", root, "--metrics-address=:9809", "--health-socket=" + root + "/health.sock"}, true},
	} {
		_, err := parseNode(t, tc.args...)
		if tc.want && err == nil {
			t.Errorf("%s: accepted %q", name, tc.args)
		}
		if !tc.want && err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
}

// ------------------------------------------------------------ root lock

// An administrator who "cleans a stale lock" removes plinth.lock while the
// old pod runs (the root's directory lock still says it is held). The
// surge pod must wait for the old one as for a busy root, not fail at once:
// failing, it never becomes ready, the old pod is never removed
// (maxUnavailable 0) and the rollout is stuck in a crash loop.
func TestAttackWaitRootLockFileRemoved(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	held, err := LockRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, LockFileName)); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { held.Unlock() })
	l, err := WaitRoot(context.Background(), 10*time.Second, func() (*RootLock, error) { return LockRoot(root) })
	if err != nil {
		t.Fatalf("WaitRoot after the lock file was removed under a running holder: %v (busy: %v), want it to wait for the holder",
			err, errors.Is(err, ErrRootBusy))
	}
	l.Unlock()
}

// The holder lets go of its locks in any order (a process that exits has
// its files closed by the kernel, not by Unlock): a moment where the lock
// file is free but the root's directory (or a pool's below it) is still
// locked is the old process going away, and is waited out.
func TestAttackWaitRootReleasedFileFirst(t *testing.T) {
	for _, withPool := range []bool{false, true} {
		tmp := t.TempDir()
		c := CSIConfig{Root: filepath.Join(tmp, "root"), Pools: []PoolSpec{{Name: "p", Backend: "file", Dir: filepath.Join(tmp, "root", "pools", "p")}}}
		held, err := claimRoot(c)
		if err != nil {
			t.Fatal(err)
		}
		// Release the lock file first, the directories 300 ms later.
		held.f.Close()
		held.f = nil
		dirs := held.dirs
		if !withPool {
			// Only the root's directory stays locked.
			for _, fd := range dirs[1:] {
				unix.Close(fd)
			}
			dirs = dirs[:1]
		}
		time.AfterFunc(300*time.Millisecond, func() {
			for _, fd := range dirs {
				unix.Close(fd)
			}
		})
		l, err := WaitRoot(context.Background(), 10*time.Second, func() (*RootLock, error) { return claimRoot(c) })
		if err != nil {
			t.Errorf("pool locked too %v: WaitRoot while the holder is letting go: %v, want it to wait", withPool, err)
			time.Sleep(400 * time.Millisecond)
			continue
		}
		l.Unlock()
	}
}

// WaitRoot stopped at any moment, the holder letting go at any moment:
// it returns promptly, and a lock it took is never lost (either it is
// returned, or the root is free again).
func TestAttackWaitRootRaces(t *testing.T) {
	for i := 0; i < 30; i++ {
		root := filepath.Join(t.TempDir(), "root")
		held, err := LockRoot(root)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Duration(rand.Intn(150))*time.Millisecond, func() { held.Unlock() })
		time.AfterFunc(time.Duration(rand.Intn(150))*time.Millisecond, cancel)
		type res struct {
			l   *RootLock
			err error
		}
		done := make(chan res, 1)
		go func() {
			l, err := WaitRoot(ctx, time.Minute, func() (*RootLock, error) { return LockRoot(root) })
			done <- res{l, err}
		}()
		var r res
		select {
		case r = <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("run %d: WaitRoot did not return", i)
		}
		cancel()
		switch {
		case r.err == nil && r.l == nil:
			t.Errorf("run %d: nil lock and nil error", i)
		case r.err != nil && r.l != nil:
			t.Errorf("run %d: a lock and an error %v", i, r.err)
		case r.err != nil && !errors.Is(r.err, context.Canceled):
			t.Errorf("run %d: %v, want the lock or context.Canceled", i, r.err)
		}
		r.l.Unlock()
		time.Sleep(160 * time.Millisecond) // the holder has let go
		l, err := LockRoot(root)
		if err != nil {
			t.Errorf("run %d: root still held after everything let go: %v", i, err)
			continue
		}
		l.Unlock()
	}
}

// ------------------------------------------------------------ RunNode

// attackTreeState is every name under dir with its mode, size, mtime and, for
// regular files, content.
func attackTreeState(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			out = append(out, p+": "+err.Error())
			return nil
		}
		s := fmt.Sprintf("%s %v %d %d", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			s += " " + string(b)
		}
		out = append(out, s)
		return nil
	})
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// While it waits for the root, a node changes nothing under it: not a
// name, a mode, a time, or the holder's pid in the lock file.
func TestAttackNothingUnderRootBeforeLock(t *testing.T) {
	cfg := handoverNode(t, time.Minute)
	held, err := LockRoot(cfg.Root)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	os.MkdirAll(filepath.Join(cfg.Root, "dra"), 0o750)
	before := attackTreeState(t, cfg.Root)
	time.Sleep(20 * time.Millisecond) // mtimes would differ
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunNode(ctx, cfg) }()
	defer func() { cancel(); <-done }()
	waitFor(t, func() bool { return exists(cfg.HealthSocket) })
	time.Sleep(600 * time.Millisecond) // a dozen claims
	if after := attackTreeState(t, cfg.Root); after != before {
		t.Errorf("the root changed while another process held it:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func goroutinesSettle(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Errorf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), base, buf[:n])
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A node stopped at any moment of the handover (waiting, just taking the
// root, serving), the old holder letting go at any moment: RunNode
// returns nil (a stop is not a failure), leaves no socket, no listener,
// no goroutine, and lets the root go.
func TestAttackStopAtAnyMoment(t *testing.T) {
	base := runtime.NumGoroutine()
	for i := 0; i < 8; i++ {
		cfg := handoverNode(t, time.Minute)
		held, err := LockRoot(cfg.Root)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		release := time.Duration(rand.Intn(200)) * time.Millisecond
		stop := time.Duration(rand.Intn(300)) * time.Millisecond
		time.AfterFunc(release, func() { held.Unlock() })
		time.AfterFunc(stop, cancel)
		done := make(chan error, 1)
		go func() { done <- RunNode(ctx, cfg) }()
		select {
		case err = <-done:
		case <-time.After(15 * time.Second):
			t.Fatalf("run %d (release %s, stop %s): RunNode did not return", i, release, stop)
		}
		cancel()
		if err != nil {
			t.Errorf("run %d (release %s, stop %s): stopped: %v, want nil", i, release, stop, err)
		}
		time.Sleep(release) // let the holder go for sure
		for _, p := range []string{cfg.HealthSocket, strings.TrimPrefix(cfg.Endpoint, "unix://")} {
			if exists(p) {
				t.Errorf("run %d: %s left behind", i, p)
			}
		}
		if c, err := net.Dial("tcp", cfg.MetricsAddress); err == nil {
			c.Close()
			t.Errorf("run %d: metrics still served", i)
		}
		if l, err := LockRoot(cfg.Root); err != nil {
			t.Errorf("run %d: root not let go: %v", i, err)
		} else {
			l.Unlock()
		}
	}
	goroutinesSettle(t, base)
}

// The root claimed fails for another reason than "busy" (here: a root
// others may write) while the node waits with --wait-for-root: it fails
// at once with that reason, and what it started first (health socket,
// metrics) is gone.
func TestAttackClaimFailsNotBusy(t *testing.T) {
	base := runtime.NumGoroutine()
	cfg := handoverNode(t, time.Minute)
	os.MkdirAll(cfg.Root, 0o750)
	os.Chmod(cfg.Root, 0o777)
	start := time.Now()
	err := RunNode(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "writable by others") || errors.Is(err, ErrRootBusy) {
		t.Errorf("RunNode on a root others may write: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("failed after %s, want at once", took)
	}
	if exists(cfg.HealthSocket) {
		t.Errorf("health socket left behind")
	}
	if c, err := net.Dial("tcp", cfg.MetricsAddress); err == nil {
		c.Close()
		t.Errorf("metrics still served")
	}
	goroutinesSettle(t, base)
}

// --metrics-address taken by something that is not plinth (a careless
// choice of host port on the host network): before the handover a node
// failed at once ("address already in use"). ServeWhenFree waits for the
// old pod to free it, but once this node holds the root the old plinth has
// stopped (it lets the root go only after its metrics server has closed),
// and the port will never come free: the node must fail, not run for ever
// without metrics while its exec probes, on the health socket, say ok.
func TestAttackMetricsStranger(t *testing.T) {
	cfg := handoverNode(t, time.Minute)
	stranger, err := net.Listen("tcp", cfg.MetricsAddress)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- RunNode(ctx, cfg) }()
	sock := strings.TrimPrefix(cfg.Endpoint, "unix://")
	waitFor(t, func() bool { return exists(sock) }) // it holds the root, serves CSI
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), cfg.MetricsAddress) {
			t.Errorf("RunNode: %v, want an error naming %s", err, cfg.MetricsAddress)
		}
	case <-time.After(10 * time.Second):
		perr := Probe(context.Background(), cfg.HealthSocket, "/healthz")
		t.Errorf("10 s after it took the root, the node still runs without its metrics port %s (held by another program); health socket says: %v", cfg.MetricsAddress, perr)
		cancel()
		<-done
	}
}

// A node with --csi=false and device plugins (the chart's node.csi: false)
// in a surge rolling update: the new pod starts beside the old one, whose
// device-plugin sockets have fixed names. The new pod must wait for the
// old one (as it does for the root), not fail at once: failing, it is never
// ready, the old pod is never removed (maxUnavailable 0), the rollout is
// stuck in a crash loop.
func TestAttackDevicesOnlySurge(t *testing.T) {
	fx, _ := filepath.Abs("../../testdata/devices/nvidia-8gpu")
	kubelet := t.TempDir()
	root := t.TempDir()
	mk := func(wait time.Duration) NodeConfig {
		cfg := NodeConfig{Devices: true, KubeletDir: kubelet, ProcRoot: filepath.Join(fx, "proc"), WaitForRoot: wait}
		cfg.CSIConfig = CSIConfig{SysfsRoot: filepath.Join(fx, "sys"), DevRoot: filepath.Join(fx, "dev"), Root: root,
			NodeID: "n1", DriverName: "plinth.example.com", TopologyKey: "k"}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	old := mk(0)
	oldCtx, oldCancel := context.WithCancel(context.Background())
	oldDone := make(chan error, 1)
	go func() { oldDone <- RunNode(oldCtx, old) }()
	defer func() { oldCancel(); <-oldDone }()
	var res device.Resource
	for _, r := range old.devices.Resources {
		res = r
	}
	sock := filepath.Join(kubelet, "device-plugins", deviceplugin.SocketName(res))
	waitFor(t, func() bool { return exists(sock) })

	nu := mk(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunNode(ctx, nu) }()
	defer func() { cancel(); <-done }()
	select {
	case err := <-done:
		done <- err
		t.Fatalf("the surge pod (--csi=false, device plugins, --wait-for-root=1m) failed beside the old one: %v", err)
	case <-time.After(time.Second):
	}
	oldCancel()
	<-oldDone
	oldDone <- nil
	// The old one has stopped: a server that answers on the socket now is
	// the new one's (an inode number can be reused, so no inode check).
	waitFor(t, func() bool {
		c, err := net.DialTimeout("unix", sock, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// What --pod-uid with a slash does when nothing refuses it: the DRA
// kubelet plugin names its sockets after the UID (<registry>/<driver>-
// <uid>-reg.sock, <data dir>/dra-<uid>.sock) and unixsock.Listen makes
// their directories, so a UID like x/../../../outside puts a socket (and
// directories) outside the kubelet's directory. Nothing of the driver's may
// land outside --kubelet-dir (and its state dir, and the CDI dir).
func TestAttackPodUIDEscapesKubeletDir(t *testing.T) {
	fx, _ := filepath.Abs("../../testdata/devices/nvidia-8gpu")
	tmp := t.TempDir()
	kubelet := filepath.Join(tmp, "kubelet")
	os.MkdirAll(filepath.Join(kubelet, "plugins_registry"), 0o750)
	cfg, err := device.ParseConfig([]byte("apiVersion: plinth.example.com/v1alpha1\nkind: DeviceConfig\nresources: [{name: example.com/gpu, api: dra, selector: {drivers: [nvidia]}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Defaults()
	host := device.Host{Sysfs: filepath.Join(fx, "sys"), Dev: filepath.Join(fx, "dev"), Proc: filepath.Join(fx, "proc")}
	inv := device.NewInventory(host, cfg)
	if _, _, err := inv.Scan(); err != nil {
		t.Fatal(err)
	}
	client := k8sfake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}})
	d, err := dra.New(dra.Config{DriverName: "plinth.example.com", NodeName: "node-a", KubeletDir: kubelet, StateDir: filepath.Join(tmp, "root"),
		CDIDir: filepath.Join(tmp, "cdi"), DevRoot: host.Dev, Resources: draResources(cfg), Inventory: inv, Client: client,
		HandoverPoll: 10 * time.Millisecond, PodUID: "x/../../../outside"})
	if err == nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && !exists(filepath.Join(tmp, "outside-reg.sock")) {
			time.Sleep(10 * time.Millisecond)
		}
		var outside []string
		ents, _ := os.ReadDir(tmp)
		for _, e := range ents {
			if n := e.Name(); n != "kubelet" && n != "root" && n != "cdi" {
				outside = append(outside, n)
			}
		}
		cancel()
		<-done
		if len(outside) > 0 {
			t.Errorf("--pod-uid x/../../../outside: the DRA driver made %v in %s, outside --kubelet-dir %s", outside, tmp, kubelet)
		}
	}
}
