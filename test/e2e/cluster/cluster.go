// Package cluster starts a single-node Kubernetes cluster on loopback from
// binaries built by test/e2e/build-cluster.sh: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd v2 (its shim and ctr
// from the same build; Debian's runc through a wrapper, see
// runc-wrapper.sh; CDI specs read from Options.CDIDir) and the kubelet;
// and, once the caller has applied its CRDs, the CSI snapshot controller. The node's address is
// NodeIP on a bridge of its own (the kubelet refuses a loopback node IP, and
// the API server reaches the kubelet there for exec, logs and port-forward,
// with a client certificate). Stop undoes what it and the kubelet changed on
// the host: processes (by PID), mounts, sysctls, iptables rules, the CNI
// bridge and the node's bridge.
package cluster

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// KubeletDir is fixed: plinth's manifests mount /var/lib/kubelet.
const KubeletDir = "/var/lib/kubelet"

// NodeIP is the node's address, on the bridge NodeLink that Start makes
// (this VM has no dummy interfaces) and Stop removes. The kubelet serves
// on it; the API server dials it for exec, logs and port-forward.
const (
	NodeIP   = "10.250.0.1"
	NodeLink = "plinth-e2e-n"
)

// Options of a cluster.
type Options struct {
	Bin      string // etcd and the Kubernetes binaries, the snapshotter link
	Dir      string // everything the cluster writes (short: socket paths)
	NodeName string
	// RuncWrapper is the script containerd runs as runc.
	RuncWrapper string
	// CDIDir is the directory containerd reads CDI specs from: where the
	// node's plinth writes them. A worker reads the same path in its own
	// mount namespace, where it is a directory of the worker's own.
	CDIDir string
	Log    func(format string, args ...any)
}

// Cluster is a running cluster.
type Cluster struct {
	Options
	Kubeconfig string
	Config     *rest.Config
	Client     kubernetes.Interface
	Containerd string // socket

	procs   map[string]*exec.Cmd
	sysctls map[string]string
	iptSave []byte
	workers []*Worker
	// workerImages are the image tarballs every worker's containerd
	// imports (SetWorkerImages).
	workerImages []string
}

// SetWorkerImages names the image tarballs each worker's containerd
// imports when it starts.
func (c *Cluster) SetWorkerImages(tars []string) { c.workerImages = tars }

const token = "plinth-e2e-admin-token"

var sysctlNames = []string{"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory"}

// Start brings the cluster up and waits until the node is Ready.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	c := &Cluster{Options: o, procs: map[string]*exec.Cmd{}, sysctls: map[string]string{}}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	if c.CDIDir == "" || !filepath.IsAbs(c.CDIDir) {
		return nil, fmt.Errorf("cluster: CDIDir %q must be an absolute path", c.CDIDir)
	}
	for _, n := range []string{"containerd", "containerd-shim-runc-v2", "ctr"} {
		if _, err := os.Stat(c.containerdBin(n)); err != nil {
			return nil, fmt.Errorf("containerd (run test/e2e/build-cluster.sh): %w", err)
		}
	}
	if n := ReapLeftovers(); n > 0 {
		c.Log("killed %d processes an earlier run left behind", n)
	}
	for _, n := range sysctlNames {
		if b, err := os.ReadFile("/proc/sys/" + n); err == nil {
			c.sysctls[n] = strings.TrimSpace(string(b))
		}
	}
	if out, err := exec.Command("iptables-save").Output(); err == nil {
		c.iptSave = out
	}
	for _, d := range []string{"logs", "pki", "etcd", "containerd", "cni", "kubelet"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := c.addNodeLink(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.start(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// addNodeLink makes the bridge that carries NodeIP (one an earlier run left
// is replaced).
func (c *Cluster) addNodeLink(ctx context.Context) error {
	_ = exec.Command("ip", "link", "delete", NodeLink).Run()
	for _, args := range [][]string{
		{"link", "add", NodeLink, "type", "bridge"},
		{"addr", "add", NodeIP + "/32", "dev", NodeLink},
		{"link", "set", NodeLink, "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// containerdBin is a program of the containerd build-cluster.sh built
// (containerd, containerd-shim-runc-v2, ctr), through the link that names
// the version test/e2e/containerd pins.
func (c *Cluster) containerdBin(name string) string {
	return filepath.Join(c.Bin, "containerd", name)
}

// ctr is the ctr of that build, for every ctr command.
func (c *Cluster) ctr() string { return c.containerdBin("ctr") }

// containerdCmd is containerd with its configuration file, the shim of
// its own build first on PATH (containerd looks the shim up there before
// beside itself; Debian's containerd package has one in /usr/bin).
func (c *Cluster) containerdCmd(conf string) (string, []string, []string) {
	env := append(os.Environ(), "PATH="+filepath.Join(c.Bin, "containerd")+":"+os.Getenv("PATH"))
	return c.containerdBin("containerd"), []string{"--config", conf}, env
}

func (c *Cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.Dir}, parts...)...)
}

func (c *Cluster) run(name string, bin string, args ...string) error {
	return c.runEnv(name, nil, bin, args...)
}

// runEnv is run with the environment env (nil: this process's).
func (c *Cluster) runEnv(name string, env []string, bin string, args ...string) error {
	logf, err := os.OpenFile(c.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	c.procs[name] = cmd
	go func() { _ = cmd.Wait(); logf.Close() }()
	return nil
}

func (c *Cluster) start(ctx context.Context) error {
	pki := c.path("pki")
	if err := writeCerts(pki); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(pki, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	c.Kubeconfig = c.path("kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:6443", certificate-authority: %q}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]
current-context: e2e
`, filepath.Join(pki, "ca.crt"), token)
	if err := os.WriteFile(c.Kubeconfig, []byte(kc), 0o600); err != nil {
		return err
	}
	bin := func(n string) string { return filepath.Join(c.Bin, n) }

	c.Log("starting etcd")
	if err := c.run("etcd", bin("etcd"), "--name=e2e", "--data-dir="+c.path("etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=e2e=http://127.0.0.1:2380", "--unsafe-no-fsync"); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://127.0.0.1:2379/health", 30*time.Second); err != nil {
		return fmt.Errorf("etcd: %w (see %s)", err, c.path("logs", "etcd.log"))
	}

	c.Log("starting kube-apiserver")
	if err := c.run("kube-apiserver", bin("kube-apiserver"), "--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=6443",
		"--tls-cert-file="+filepath.Join(pki, "server.crt"), "--tls-private-key-file="+filepath.Join(pki, "server.key"),
		"--client-ca-file="+filepath.Join(pki, "ca.crt"),
		"--kubelet-client-certificate="+filepath.Join(pki, "kubelet-client.crt"), "--kubelet-client-key="+filepath.Join(pki, "kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+filepath.Join(pki, "sa.pub"), "--service-account-signing-key-file="+filepath.Join(pki, "sa.key"),
		"--token-auth-file="+filepath.Join(pki, "tokens.csv"), "--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true", "--endpoint-reconciler-type=none"); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 100, 200
	c.Config = cfg
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		b, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(b) == "ok", nil
	}); err != nil {
		return fmt.Errorf("kube-apiserver not ready: %w (see %s)", err, c.path("logs", "kube-apiserver.log"))
	}

	c.Log("starting kube-controller-manager and kube-scheduler")
	if err := c.startControllerManager(); err != nil {
		return err
	}
	if err := c.run("kube-scheduler", bin("kube-scheduler"), "--kubeconfig="+c.Kubeconfig,
		"--authentication-kubeconfig="+c.Kubeconfig, "--authorization-kubeconfig="+c.Kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10259"); err != nil {
		return err
	}

	if err := c.startContainerd(ctx); err != nil {
		return err
	}
	return c.StartKubelet(ctx)
}

// startControllerManager starts kube-controller-manager with extra flags
// after the cluster's own.
func (c *Cluster) startControllerManager(extra ...string) error {
	pki := c.path("pki")
	args := append([]string{"--kubeconfig=" + c.Kubeconfig,
		"--authentication-kubeconfig=" + c.Kubeconfig, "--authorization-kubeconfig=" + c.Kubeconfig,
		"--root-ca-file=" + filepath.Join(pki, "ca.crt"), "--service-account-private-key-file=" + filepath.Join(pki, "sa.key"),
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10257", "--use-service-account-credentials=false"}, extra...)
	return c.run("kube-controller-manager", filepath.Join(c.Bin, "kube-controller-manager"), args...)
}

// RestartControllerManager stops kube-controller-manager and starts it
// again with extra flags (e.g. --kube-api-qps=100); none restores the
// cluster's own.
func (c *Cluster) RestartControllerManager(extra ...string) error {
	c.stop("kube-controller-manager")
	return c.startControllerManager(extra...)
}

func (c *Cluster) startContainerd(ctx context.Context) error {
	c.Containerd = c.path("containerd", "containerd.sock")
	cni := `{"cniVersion": "0.4.0", "name": "plinth-e2e", "plugins": [{"type": "bridge", "bridge": "plinth-e2e0",
  "isGateway": true, "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
  {"type": "loopback"}]}`
	if err := os.WriteFile(c.path("cni", "10-plinth-e2e.conflist"), []byte(cni), 0o600); err != nil {
		return err
	}
	conf := c.containerdConfig(c.path("containerd", "root"), c.path("containerd", "state"), c.Containerd, c.path("cni"))
	if err := os.WriteFile(c.path("containerd", "config.toml"), []byte(conf), 0o600); err != nil {
		return err
	}
	bin, args, env := c.containerdCmd(c.path("containerd", "config.toml"))
	c.Log("starting containerd %s (CDI specs from %s)", bin, c.CDIDir)
	if err := c.runEnv("containerd", env, bin, args...); err != nil {
		return err
	}
	v, err := c.waitContainerd(ctx, c.Containerd)
	if err != nil {
		return fmt.Errorf("containerd: %w (see %s)", err, c.path("logs", "containerd.log"))
	}
	c.Log("containerd %s up", v)
	return nil
}

// waitContainerd waits until the containerd at sock answers ctr version,
// and returns the server's version.
func (c *Cluster) waitContainerd(ctx context.Context, sock string) (string, error) {
	var out []byte
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		out, err = exec.CommandContext(ctx, c.ctr(), "--address", sock, "version").Output()
		return err == nil, nil
	})
	if err != nil {
		return "", err
	}
	_, server, _ := strings.Cut(string(out), "Server:")
	for _, l := range strings.Split(server, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Version:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return strings.TrimSpace(server), nil
}

// containerdConfig is a containerd v2 configuration (version 3: the CRI
// plugin split into runtime, images and the gRPC service) with its own
// root, state and socket, the shim of its build, runc through the
// wrapper, CNI from cniDir and CDI specs from CDIDir. CDI injection is
// always on in containerd 2.4 (enable_cdi is gone); the kubelet passes a
// device plugin's CDI device names and containerd applies their specs.
func (c *Cluster) containerdConfig(root, state, sock, cniDir string) string {
	return fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]
[grpc]
  address = %q
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "registry.k8s.io/pause:3.10"
[plugins.'io.containerd.cri.v1.runtime']
  cdi_spec_dirs = [%q]
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = %q
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
`, root, state, sock, c.CDIDir, c.containerdBin("containerd-shim-runc-v2"), c.RuncWrapper, cniDir)
}

// ImportImage loads an image tarball into containerd's Kubernetes namespace.
func (c *Cluster) ImportImage(ctx context.Context, tarPath string) error {
	return c.importImage(ctx, c.Containerd, tarPath)
}

func (c *Cluster) importImage(ctx context.Context, sock, tarPath string) error {
	out, err := exec.CommandContext(ctx, c.ctr(), "--address", sock, "-n", "k8s.io", "images", "import", tarPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import %s: %w: %s", tarPath, err, out)
	}
	return nil
}

// ContainerSpec returns the OCI runtime spec (JSON) containerd holds for a
// container on the host node: id as the pod's status names it, without its
// containerd:// prefix.
func (c *Cluster) ContainerSpec(ctx context.Context, id string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, c.ctr(), "--address", c.Containerd, "-n", "k8s.io", "containers", "info", "--spec", id).Output()
	if err != nil {
		return nil, fmt.Errorf("ctr containers info %s: %w", id, err)
	}
	return out, nil
}

// StartKubelet starts the kubelet and waits for the node to be Ready.
func (c *Cluster) StartKubelet(ctx context.Context) error {
	conf := kubeletConfig(c.Containerd, NodeIP, filepath.Join(c.path("pki"), "ca.crt"), "")
	if err := os.WriteFile(c.path("kubelet", "config.yaml"), []byte(conf), 0o600); err != nil {
		return err
	}
	c.Log("starting kubelet")
	if err := c.run("kubelet", filepath.Join(c.Bin, "kubelet"), "--config="+c.path("kubelet", "config.yaml"),
		"--kubeconfig="+c.Kubeconfig, "--hostname-override="+c.NodeName, "--node-ip="+NodeIP,
		"--root-dir="+KubeletDir, "--v=2"); err != nil {
		return err
	}
	return c.WaitNodeReady(ctx, 2*time.Minute)
}

// kubeletConfig is the kubelet's configuration: its runtime, its address,
// the CA of client certificates, and its cgroupRoot (empty: "/").
func kubeletConfig(containerd, ip, ca, cgroupRoot string) string {
	s := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failSwapOn: false
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%s
address: %s
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: %q}}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 5s
volumeStatsAggPeriod: 5s
`, containerd, ip, ca)
	if cgroupRoot != "" {
		s += "cgroupRoot: " + cgroupRoot + "\n"
	}
	return s
}

// snapshotCRDs are the v1 CRDs the snapshot controller serves, as
// build-cluster.sh names them.
var snapshotCRDs = []string{"volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses"}

// snapshotter is a path in the directory build-cluster.sh puts the CSI
// snapshot controller and its CRDs in, through the link that names the
// version test/e2e/snapshot-controller pins.
func (c *Cluster) snapshotter(parts ...string) string {
	return filepath.Join(append([]string{c.Bin, "snapshotter"}, parts...)...)
}

// SnapshotCRDs returns the CRDs of VolumeSnapshot, VolumeSnapshotContent
// and VolumeSnapshotClass as one YAML stream. The cluster package applies
// no manifests: the caller applies these before StartSnapshotController.
func (c *Cluster) SnapshotCRDs() ([]byte, error) {
	var out []byte
	for _, n := range snapshotCRDs {
		b, err := os.ReadFile(c.snapshotter("snapshot-crds", "snapshot.storage.k8s.io_"+n+".yaml"))
		if err != nil {
			return nil, fmt.Errorf("snapshot CRDs (run test/e2e/build-cluster.sh): %w", err)
		}
		out = append(append(out, "\n---\n"...), b...)
	}
	return out, nil
}

// StartSnapshotController starts the CSI snapshot controller, which binds
// VolumeSnapshots to VolumeSnapshotContents (a driver's csi-snapshotter
// sidecar cuts the snapshots). It exits when the CRDs of SnapshotCRDs are
// not served within 30 seconds: apply them first. Stop stops it.
func (c *Cluster) StartSnapshotController() error {
	c.Log("starting snapshot-controller")
	// Volume group snapshots are on by default and their CRDs are not
	// applied: with the gate on it would wait 30 seconds for them before
	// it starts working.
	return c.run("snapshot-controller", c.snapshotter("snapshot-controller"), "--kubeconfig="+c.Kubeconfig,
		"--leader-election=false", "--feature-gates=CSIVolumeGroupSnapshot=false")
}

// StopKubelet stops the kubelet (SIGTERM, then SIGKILL) and waits for it.
func (c *Cluster) StopKubelet() { c.stop("kubelet") }

// WaitNodeReady waits until the node reports Ready.
func (c *Cluster) WaitNodeReady(ctx context.Context, timeout time.Duration) error {
	return c.waitReady(ctx, c.NodeName, timeout, c.path("logs", "kubelet.log"))
}

func (c *Cluster) waitReady(ctx context.Context, name string, timeout time.Duration, log string) error {
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s not Ready: %w (see %s)", name, err, log)
	}
	return nil
}

func (c *Cluster) stop(name string) { stopProc(c.procs, name) }

// stopProc stops procs[name] (SIGTERM, then SIGKILL) and forgets it.
func stopProc(procs map[string]*exec.Cmd, name string) {
	cmd, ok := procs[name]
	if !ok || cmd.Process == nil {
		return
	}
	delete(procs, name)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if cmd.Process.Signal(syscall.Signal(0)) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	time.Sleep(200 * time.Millisecond)
}

// Stop stops everything Start started and restores the host.
func (c *Cluster) Stop() {
	for _, w := range c.workers {
		w.Remove()
	}
	c.workers = nil
	c.stop("kubelet")
	c.killContainers(c.Containerd)
	for _, n := range []string{"containerd", "snapshot-controller", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		c.stop(n)
	}
	// Pod mounts (and the kubelet's bind mount of its root) and the
	// containers' rootfs mounts.
	unmountUnder(KubeletDir)
	unmountUnder(c.Dir)
	_ = exec.Command("ip", "link", "delete", "plinth-e2e0").Run()
	_ = exec.Command("ip", "link", "delete", NodeLink).Run()
	for n, v := range c.sysctls {
		_ = os.WriteFile("/proc/sys/"+n, []byte(v), 0o644)
	}
	if c.iptSave != nil {
		cmd := exec.Command("iptables-restore")
		cmd.Stdin = strings.NewReader(string(c.iptSave))
		_ = cmd.Run()
	}
}

// killContainers kills every container task and the shims containerd
// started for this cluster (they outlive containerd otherwise).
func (c *Cluster) killContainers(sock string) {
	if sock == "" {
		return
	}
	out, _ := exec.Command(c.ctr(), "--address", sock, "-n", "k8s.io", "tasks", "ls", "-q").Output()
	for _, id := range strings.Fields(string(out)) {
		_ = exec.Command(c.ctr(), "--address", sock, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id).Run()
	}
	time.Sleep(time.Second)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		s := string(cmdline)
		if strings.Contains(s, "containerd-shim") && strings.Contains(s, sock) {
			var pid int
			if _, err := fmt.Sscan(e.Name(), &pid); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// ReapLeftovers kills what an earlier run that died without Stop (a test
// binary killed on timeout) left running: the cluster's processes (their
// command lines name a plinth-e2e- directory) and the containers of its
// pods (their root filesystem is an overlay in that directory: another
// kubelet's pods on the machine are left alone), then unmounts the
// kubelet's directory.
func ReapLeftovers() int {
	n := 0
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == self || pid == 1 {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		ours := strings.Contains(string(cmdline), "/plinth-e2e-")
		if !ours {
			mounts, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "mountinfo"))
			root, _, _ := strings.Cut(string(mounts), "\n") // the root mount comes first
			ours = strings.Contains(root, "/plinth-e2e-")
		}
		if ours {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
	}
	if n > 0 {
		time.Sleep(time.Second)
	}
	unmountUnder(KubeletDir)
	// Workers' cgroups (their processes are gone now).
	if dirs, _ := filepath.Glob("/sys/fs/cgroup/*/plinth-e2e-*"); len(dirs) > 0 {
		removeCgroupTrees(dirs)
	}
	if dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "plinth-e2e-*")); len(dirs) > 0 {
		for _, d := range dirs {
			unmountUnder(d)
		}
	}
	return n
}

// unmountUnder unmounts every mount at or below dir, deepest first.
func unmountUnder(dir string) {
	for range 3 {
		f, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			return
		}
		var points []string
		s := bufio.NewScanner(f)
		for s.Scan() {
			fields := strings.Fields(s.Text())
			if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
				points = append(points, fields[4])
			}
		}
		f.Close()
		if len(points) == 0 {
			return
		}
		sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
		for _, p := range points {
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
		}
	}
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		resp, err := http.Get(url)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	})
}

// Logs returns the tail of a component's log, for failure messages.
func (c *Cluster) Logs(name string, lines int) string {
	b, err := os.ReadFile(c.path("logs", name+".log"))
	if err != nil {
		return err.Error()
	}
	all := strings.Split(string(b), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
