package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
)

// A Worker is one more node on this machine: its own kubelet and its own
// containerd, both inside a network namespace and a mount namespace the
// suite made (held by a `sleep` process started with unshare).
//
//   - Network: a veth pair, one end on NodeLink (and the workers' /24
//     routed there from NodeIP), the other in the namespace with the worker's address
//     10.250.0.(10+index). The API server stays on the host's loopback: the
//     suite listens on 127.0.0.1:6443 inside the namespace and carries each
//     connection to the host's 127.0.0.1:6443, so the kubelet's kubeconfig
//     and the in-cluster address plinth's host-network pods use are the same
//     on every node. The API server dials the worker's kubelet on its
//     address. Host-network pods (plinth) share the worker's namespace; the
//     others get a CNI bridge inside it (10.244.(index).0/24).
//   - Mounts: the namespace is a slave copy of the host's; the host's
//     mounts at and below /var/lib/kubelet and the other bound paths are
//     unmounted in it, and the worker's own directories bound there instead:
//     /var/lib/kubelet (the device-plugin and
//     plugin-registration paths are fixed inside the kubelet),
//     /var/log/pods, /var/log/containers, the CDI directory (Options.CDIDir,
//     unless a directory the caller names holds it: the worker's plinth
//     writes its specs there and the worker's containerd reads them, so two
//     nodes' specs never mix) and the directories the caller names
//     (plinth's host paths), each made shared for the kubelet's
//     Bidirectional mounts. What the worker mounts stays in its namespace.
//   - containerd: one per worker, started inside the namespaces. The
//     kubelet and the runtime must see the same mounts (the runtime binds
//     the kubelet's volume mounts into containers), and host-network
//     containers take the runtime's network namespace: a containerd shared
//     with the host node would put a worker's plinth on the host's network
//     and mounts.
//   - cgroups: the kubelet's cgroupRoot is /plinth-e2e-<name> in every v1
//     hierarchy.
type Worker struct {
	c      *Cluster
	Name   string
	IP     string
	Dir    string // everything the worker writes on the host
	Index  int
	holder *exec.Cmd
	link   string // the veth end on the host
	cgroup string
	proxy  net.Listener
	procs  map[string]*exec.Cmd
	// Containerd is the worker's containerd socket.
	Containerd string
}

// NewWorker makes the namespaces of worker number index (1..9) named
// name; binds maps a directory on the host to the path inside the worker
// where it is mounted (e.g. the worker's own plinth directory over
// plinth's host path). Start starts its containerd and kubelet (the caller
// can prepare the worker with Exec first); Stop of the cluster removes it.
func (c *Cluster) NewWorker(ctx context.Context, name string, index int, binds map[string]string) (*Worker, error) {
	if index < 1 || index > 9 {
		return nil, fmt.Errorf("worker index %d: 1 to 9", index)
	}
	w := &Worker{c: c, Name: name, Index: index, IP: fmt.Sprintf("10.250.0.%d", 10+index),
		Dir: c.path("nodes", name), link: fmt.Sprintf("plinth-e2e-w%d", index),
		cgroup: "/plinth-e2e-" + name, procs: map[string]*exec.Cmd{}}
	c.workers = append(c.workers, w)
	if err := w.setUp(ctx, binds); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Worker) path(parts ...string) string {
	return filepath.Join(append([]string{w.Dir}, parts...)...)
}

// Exec runs a program inside the worker's namespaces (nsenter into the
// holder process, never into PID 1).
func (w *Worker) Exec(ctx context.Context, name string, args ...string) (string, error) {
	full := append([]string{"-t", strconv.Itoa(w.holder.Process.Pid), "-n", "-m", "--", name}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s %s: %w: %s", w.Name, name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// Root is the worker's view of the file system (/proc/<holder>/root): a
// path inside the worker is Root()+path on the host.
func (w *Worker) Root() string { return fmt.Sprintf("/proc/%d/root", w.holder.Process.Pid) }

func (w *Worker) setUp(ctx context.Context, binds map[string]string) error {
	for _, d := range []string{"logs", "kubelet", "pods-log", "containers-log", "containerd", "cni", "cni-ipam"} {
		if err := os.MkdirAll(w.path(d), 0o700); err != nil {
			return err
		}
	}
	// The holder: unshare(2) of the network and mount namespaces, then sleep.
	// (The worker's directory is in the holder's command line, so that
	// ReapLeftovers finds it after a run that died.)
	w.holder = exec.Command("unshare", "--net", "--mount", "--propagation", "slave", "--",
		"sh", "-c", "while :; do sleep 3600; done", w.Dir)
	w.holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := w.holder.Start(); err != nil {
		return fmt.Errorf("worker %s: unshare: %w", w.Name, err)
	}
	go func() { _ = w.holder.Wait() }()
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", w.holder.Process.Pid))
		return err == nil && ns != self, nil
	}); err != nil {
		return fmt.Errorf("worker %s: the namespaces did not appear: %w", w.Name, err)
	}
	all := map[string]string{w.path("kubelet"): KubeletDir, w.path("pods-log"): "/var/log/pods", w.path("containers-log"): "/var/log/containers"}
	cdiBound := false
	for src, dst := range binds {
		all[src] = dst
		cdiBound = cdiBound || dst == w.c.CDIDir || strings.HasPrefix(w.c.CDIDir, dst+"/")
	}
	if !cdiBound {
		all[w.path("cdi")] = w.c.CDIDir
	}
	dsts := make([]string, 0, len(all))
	srcOf := map[string]string{}
	for src, dst := range all {
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		dsts = append(dsts, dst)
		srcOf[dst] = src
	}
	sort.Strings(dsts) // parents first
	for _, dst := range dsts {
		// What the host has mounted there (its copy in this namespace) goes
		// first: a bind stacked on it would leave two mounts at one path, and
		// the runtime's check that a Bidirectional source is shared reads
		// the lower one. Unmounting in a slave copy leaves the host's alone.
		for range 8 {
			if _, err := w.Exec(ctx, "mountpoint", "-q", dst); err != nil {
				break
			}
			if _, err := w.Exec(ctx, "umount", "-l", dst); err != nil { // with what is below it
				return err
			}
		}
		if _, err := w.Exec(ctx, "mount", "--bind", srcOf[dst], dst); err != nil {
			return err
		}
		if _, err := w.Exec(ctx, "mount", "--make-rshared", dst); err != nil {
			return err
		}
	}
	// The network: NodeLink carries the host's end.
	if _, err := w.c.ensureBridgeNet(ctx); err != nil {
		return err
	}
	_ = exec.Command("ip", "link", "delete", w.link).Run()
	if out, err := exec.CommandContext(ctx, "ip", "link", "add", w.link, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(w.holder.Process.Pid)).CombinedOutput(); err != nil {
		return fmt.Errorf("veth for %s: %w: %s", w.Name, err, out)
	}
	for _, args := range [][]string{{"link", "set", w.link, "master", NodeLink}, {"link", "set", w.link, "up"}} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, args := range [][]string{{"addr", "add", w.IP + "/24", "dev", "eth0"}, {"link", "set", "eth0", "up"}, {"link", "set", "lo", "up"}} {
		if _, err := w.Exec(ctx, "ip", args...); err != nil {
			return err
		}
	}
	if w.proxy, err = listenInNetns(fmt.Sprintf("/proc/%d/ns/net", w.holder.Process.Pid), "127.0.0.1:6443"); err != nil {
		return fmt.Errorf("worker %s: API server proxy: %w", w.Name, err)
	}
	go forward(w.proxy, "127.0.0.1:6443")
	return w.makeCgroups()
}

// ensureBridgeNet routes the workers' /24 to NodeLink from NodeIP (which
// stays a /32: the host's kubelet listens on it).
func (c *Cluster) ensureBridgeNet(ctx context.Context) (bool, error) {
	out, err := exec.CommandContext(ctx, "ip", "route", "show", "dev", NodeLink).Output()
	if err != nil {
		return false, fmt.Errorf("ip route show dev %s: %w", NodeLink, err)
	}
	if strings.Contains(string(out), "10.250.0.0/24") {
		return false, nil
	}
	args := []string{"route", "add", "10.250.0.0/24", "dev", NodeLink, "src", NodeIP}
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return false, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return true, nil
}

// cgroupDirs are the worker's cgroupRoot in each v1 hierarchy.
func (w *Worker) cgroupDirs() []string {
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	var out []string
	for _, h := range hs {
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue
		}
		out = append(out, filepath.Join(h, w.cgroup))
	}
	return out
}

func (w *Worker) makeCgroups() error {
	for _, d := range w.cgroupDirs() {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		// A new v1 cpuset has no CPUs or memory nodes until given its parent's.
		if strings.Contains(d, "/cpuset/") {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(filepath.Dir(d), f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(d, f), err)
				}
			}
		}
	}
	return nil
}

// removeCgroups removes the worker's cgroups, deepest first (only empty
// ones can go).
func (w *Worker) removeCgroups() { removeCgroupTrees(w.cgroupDirs()) }

func removeCgroupTrees(roots []string) {
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(dirs[i])
		}
	}
}

// listenInNetns listens on addr inside the network namespace at nsPath: the
// socket is made on a thread that has joined it, then that thread returns.
func listenInNetns(nsPath, addr string) (net.Listener, error) {
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is thrown away (not unlocked) if it cannot go back.
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		l, lerr := net.Listen("tcp", addr)
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			if l != nil {
				l.Close()
			}
			ch <- result{err: fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{l, lerr}
	}()
	r := <-ch
	return r.l, r.err
}

// forward carries every connection accepted on l to addr (on the host).
func forward(l net.Listener, addr string) {
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer in.Close()
			out, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
			go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
			<-done
		}()
	}
}

// run starts a program inside the worker's namespaces, logging to
// Dir/logs/name.log.
func (w *Worker) run(name string, bin string, args ...string) error {
	return w.runEnv(name, nil, bin, args...)
}

// runEnv is run with the environment env (nil: this process's); nsenter
// passes it on.
func (w *Worker) runEnv(name string, env []string, bin string, args ...string) error {
	logf, err := os.OpenFile(w.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	full := append([]string{"-t", strconv.Itoa(w.holder.Process.Pid), "-n", "-m", "--", bin}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s on %s: %w", name, w.Name, err)
	}
	w.procs[name] = cmd
	go func() { _ = cmd.Wait(); logf.Close() }()
	return nil
}

// Start starts the worker's containerd and kubelet (again, after Stop) and
// waits until its node is Ready.
func (w *Worker) Start(ctx context.Context) error {
	w.Containerd = w.path("containerd", "containerd.sock")
	cni := fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "plinth-e2e", "plugins": [{"type": "bridge", "bridge": "plinth-e2e0",
  "isGateway": true, "ipMasq": false, "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.244.%d.0/24"}]]}},
  {"type": "loopback"}]}`, w.path("cni-ipam"), w.Index)
	if err := os.WriteFile(w.path("cni", "10-plinth-e2e.conflist"), []byte(cni), 0o600); err != nil {
		return err
	}
	conf := w.c.containerdConfig(w.path("containerd", "root"), w.path("containerd", "state"), w.Containerd, w.path("cni"))
	if err := os.WriteFile(w.path("containerd", "config.toml"), []byte(conf), 0o600); err != nil {
		return err
	}
	bin, args, env := w.c.containerdCmd(w.path("containerd", "config.toml"))
	if err := w.runEnv("containerd", env, bin, args...); err != nil {
		return err
	}
	v, err := w.c.waitContainerd(ctx, w.Containerd)
	if err != nil {
		return fmt.Errorf("containerd on %s: %w (see %s)", w.Name, err, w.path("logs", "containerd.log"))
	}
	w.c.Log("containerd %s on %s up: %s (CDI specs from its own %s)", v, w.Name, bin, w.c.CDIDir)
	for _, t := range w.c.workerImages {
		if err := w.c.importImage(ctx, w.Containerd, t); err != nil {
			return err
		}
	}
	return w.StartKubelet(ctx)
}

// StartKubelet starts the worker's kubelet (again, after StopKubelet) and
// waits until its node is Ready.
func (w *Worker) StartKubelet(ctx context.Context) error {
	conf := kubeletConfig(w.Containerd, w.IP, filepath.Join(w.c.path("pki"), "ca.crt"), w.cgroup)
	if err := os.WriteFile(w.path("kubelet.yaml"), []byte(conf), 0o600); err != nil {
		return err
	}
	if err := w.run("kubelet", filepath.Join(w.c.Bin, "kubelet"), "--config="+w.path("kubelet.yaml"),
		"--kubeconfig="+w.c.Kubeconfig, "--hostname-override="+w.Name, "--node-ip="+w.IP,
		"--root-dir="+KubeletDir, "--v=2"); err != nil {
		return err
	}
	return w.c.waitReady(ctx, w.Name, 2*time.Minute, w.path("logs", "kubelet.log"))
}

// StopKubelet stops the worker's kubelet only: its containers run on.
func (w *Worker) StopKubelet() { stopProc(w.procs, "kubelet") }

// Stop stops the worker's kubelet, its containers and containerd, as a node
// that is switched off: its namespaces, mounts and files stay, and Start
// brings it back. The Node object stays (the caller deletes it for a node
// that is gone).
func (w *Worker) Stop() {
	stopProc(w.procs, "kubelet")
	w.c.killContainers(w.Containerd)
	stopProc(w.procs, "containerd")
}

// Remove stops the worker for good: its namespaces (and the mounts in
// them), its veth and cgroups go. Its files stay in Dir.
func (w *Worker) Remove() {
	w.Stop()
	if w.proxy != nil {
		w.proxy.Close()
	}
	if w.holder != nil && w.holder.Process != nil {
		_ = w.holder.Process.Kill()
	}
	_ = exec.Command("ip", "link", "delete", w.link).Run()
	time.Sleep(200 * time.Millisecond)
	w.removeCgroups()
}

// Workers are the workers NewWorker made.
func (c *Cluster) Workers() []*Worker { return c.workers }
