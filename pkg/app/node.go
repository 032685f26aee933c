package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/reconcile"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/deviceplugin"
	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/dra"
	"github.com/plinth-dev/plinth/pkg/iolimit"
	"github.com/plinth-dev/plinth/pkg/kubelet"
	"github.com/plinth-dev/plinth/pkg/metrics"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/nodestatus"
	"github.com/plinth-dev/plinth/pkg/unixsock"
)

// NodeConfig configures `plinth node`: the CSI Node service over this
// node's pools and the device plugins for its accelerators.
type NodeConfig struct {
	CSIConfig
	Version string
	// CSI serves the CSI Node service; Devices serves the device plugins.
	CSI, Devices bool
	KubeletDir   string
	ProcRoot     string
	DeviceConfig string // path of a DeviceConfig file ("" for the defaults)
	// DeviceConfigData is a DeviceConfig given inline in the configuration
	// file (used when DeviceConfig is empty).
	DeviceConfigData []byte
	CDIDir           string // "" writes no CDI specs
	// HealthInterval and RecoverAfter override the file's health settings
	// when set.
	HealthInterval, RecoverAfter time.Duration
	// OnKubeletRegistration, when set, hears what the kubelet's plugin
	// watcher reports about the CSI driver.
	OnKubeletRegistration func(registered bool, err string)
	// Cluster reconciles this node's volume objects and publishes its
	// PlinthNode through the API server (Kubeconfig, or in-cluster).
	Cluster    bool
	Kubeconfig string
	// DeviceSysfsRoot and DeviceDevRoot are where device discovery looks
	// ("" for --sysfs-root and --dev-root); a fixture tree in tests.
	DeviceSysfsRoot, DeviceDevRoot string
	// PodUID is the UID of the pod this process runs in (the downward
	// API's metadata.uid, --pod-uid): it turns on the DRA kubelet plugin's
	// rolling updates, so that this pod serves DRA beside the one it
	// replaces (sockets named after the pod, calls serialized through a
	// lock file both share) before it holds the root.
	PodUID string
	// WaitForRoot is how long to wait for a root that another process
	// holds (the pod this one replaces in a surge rolling update) before
	// giving up; 0 refuses it at once.
	WaitForRoot time.Duration
	// HealthSocket, when set, serves /healthz and /readyz on this unix
	// socket too: probes that reach this process and not the one it
	// replaces, which on the host network holds the metrics port.
	HealthSocket string
	// Transfer is the node-to-node transfer service (volumes filled
	// from, and sent to, other nodes); with --cluster only.
	Transfer TransferConfig
	// devices is the device configuration Validate parsed (file or
	// inline, flags applied), so that RunNode does not parse it again.
	devices *device.Config
}

// Flags registers the node flags on fs.
func (c *NodeConfig) Flags(fs *flag.FlagSet) {
	c.CSIConfig.Flags(fs)
	fs.BoolVar(&c.CSI, "csi", true, "serve the CSI Node service over this node's pools")
	fs.BoolVar(&c.Devices, "devices", true, "serve device plugins for this node's accelerators")
	fs.BoolVar(&c.Cluster, "cluster", true, "reconcile this node's volume objects and publish its PlinthNode through the API server")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file for --cluster (default: the in-cluster configuration)")
	fs.StringVar(&c.DeviceSysfsRoot, "device-sysfs-root", "", "sysfs tree device discovery reads (default: --sysfs-root)")
	fs.StringVar(&c.DeviceDevRoot, "device-dev-root", "", "device-node tree device discovery and the device plugins use (default: --dev-root)")
	fs.StringVar(&c.KubeletDir, "kubelet-dir", "/var/lib/kubelet", "the kubelet's root directory (device plugins register in <dir>/device-plugins)")
	fs.StringVar(&c.ProcRoot, "proc-root", "/proc", "where procfs is mounted (NVIDIA device minors)")
	fs.StringVar(&c.DeviceConfig, "device-config", "", "DeviceConfig file (apiVersion plinth.example.com/v1alpha1); default: GPUs as example.com/gpu")
	fs.StringVar(&c.CDIDir, "cdi-dir", "/var/run/cdi", "where CDI specs for the devices are written (empty: none)")
	fs.DurationVar(&c.HealthInterval, "health-interval", 0, "device rescan period; overrides the config file's health.interval (default 5s)")
	fs.StringVar(&c.PodUID, "pod-uid", "", "UID of the pod this runs in (downward API metadata.uid): DRA rolling updates, served beside the pod this one replaces")
	fs.DurationVar(&c.WaitForRoot, "wait-for-root", 0, "how long to wait for a --root another process holds (the pod this one replaces) before failing; 0 fails at once")
	fs.StringVar(&c.HealthSocket, "health-socket", "", "unix socket that also serves /healthz and /readyz (for exec probes on the host network)")
	c.Transfer.flags(fs)
	fs.DurationVar(&c.RecoverAfter, "health-recover-after", 0, "steady health before a device is advertised healthy again; overrides health.recoverAfter (default 10s)")
	// The node's own defaults of the flags it shares with standalone.
	fs.Lookup("endpoint").Usage = "CSI endpoint, unix://PATH (default unix://<kubelet-dir>/plugins/<driver-name>/csi.sock, where the kubelet looks)"
	fs.Lookup("allowed-path").Usage = "directory under which staging and target paths may lie (repeatable; default: --kubelet-dir)"
}

// Validate fills defaults and checks the configuration.
func (c *NodeConfig) Validate() error {
	var errs []error
	if !c.CSI && !c.Devices {
		errs = append(errs, errors.New("--csi=false and --devices=false leave nothing to serve"))
	}
	for flagName, p := range map[string]string{"--kubelet-dir": c.KubeletDir, "--proc-root": c.ProcRoot, "--sysfs-root": c.SysfsRoot, "--dev-root": c.DevRoot} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q must be absolute", flagName, p))
		}
	}
	if c.DeviceSysfsRoot == "" {
		c.DeviceSysfsRoot = c.SysfsRoot
	}
	if c.DeviceDevRoot == "" {
		c.DeviceDevRoot = c.DevRoot
	}
	for flagName, p := range map[string]string{"--device-sysfs-root": c.DeviceSysfsRoot, "--device-dev-root": c.DeviceDevRoot} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q must be absolute", flagName, p))
		}
	}
	if c.WaitForRoot < 0 {
		errs = append(errs, fmt.Errorf("--wait-for-root %s must not be negative", c.WaitForRoot))
	}
	if c.HealthSocket != "" && !filepath.IsAbs(c.HealthSocket) {
		errs = append(errs, fmt.Errorf("--health-socket %q must be absolute", c.HealthSocket))
	}
	if c.HealthSocket != "" && c.MetricsAddress == "" {
		errs = append(errs, errors.New("--health-socket serves the health checks of --metrics-address, which is empty"))
	}
	if h := filepath.Clean(c.HealthSocket); c.HealthSocket != "" && filepath.IsAbs(h) {
		// Served before the root is held, beside another process: never
		// where plinth or the kubelet keep anything.
		for flagName, dir := range map[string]string{"--root": c.Root, "--kubelet-dir": c.KubeletDir} {
			if dir != "" && (h == filepath.Clean(dir) || within(h, dir)) {
				errs = append(errs, fmt.Errorf("--health-socket %s lies in %s %s: give it a directory of its own", c.HealthSocket, flagName, dir))
			}
		}
		if ep, err := unixsock.ParseEndpoint(c.Endpoint); c.Endpoint != "" && err == nil && filepath.Clean(ep) == h {
			errs = append(errs, fmt.Errorf("--health-socket %s is the CSI endpoint", c.HealthSocket))
		}
	}
	errs = append(errs, c.Transfer.validate())
	if err := dra.CheckPodUID(c.PodUID); err != nil {
		errs = append(errs, fmt.Errorf("--pod-uid: %w", err))
	}
	if c.CDIDir != "" && !filepath.IsAbs(c.CDIDir) {
		errs = append(errs, fmt.Errorf("--cdi-dir %q must be absolute", c.CDIDir))
	}
	if len(c.AllowedPaths) == 0 {
		c.AllowedPaths = []string{c.KubeletDir}
	}
	if c.Endpoint == "" {
		c.Endpoint = "unix://" + filepath.Join(c.KubeletDir, "plugins", c.DriverName, "csi.sock")
	}
	if c.CSI {
		errs = append(errs, c.CSIConfig.Validate())
	}
	if cfg, err := c.deviceConfig(); err != nil {
		errs = append(errs, err)
	} else {
		c.devices = &cfg
		if draRes := draResources(cfg); c.Devices && len(draRes) > 0 {
			if !c.Cluster {
				errs = append(errs, fmt.Errorf("resources %s are configured api: dra, which publishes ResourceSlices through the API server: it needs --cluster", dra.Names(draRes)))
			}
			if c.CDIDir == "" {
				errs = append(errs, fmt.Errorf("resources %s are configured api: dra, whose devices reach containers through CDI: --cdi-dir must not be empty", dra.Names(draRes)))
			}
		}
	}
	return errors.Join(errs...)
}

// draResources are the resources served through DRA; pluginResources the
// ones served by device plugins. Each resource is in exactly one.
func draResources(cfg device.Config) []device.Resource {
	var out []device.Resource
	for _, r := range cfg.Resources {
		if r.DRA() {
			out = append(out, r)
		}
	}
	return out
}

func pluginResources(cfg device.Config) []device.Resource {
	var out []device.Resource
	for _, r := range cfg.Resources {
		if !r.DRA() {
			out = append(out, r)
		}
	}
	return out
}

// deviceConfig is the file's configuration (or the default) with the
// flags applied over it.
func (c *NodeConfig) deviceConfig() (device.Config, error) {
	cfg := device.DefaultConfig()
	var err error
	switch {
	case c.DeviceConfig != "":
		if cfg, err = device.LoadConfig(c.DeviceConfig); err != nil {
			return device.Config{}, err
		}
	case c.DeviceConfigData != nil:
		if cfg, err = device.ParseConfig(c.DeviceConfigData); err != nil {
			return device.Config{}, fmt.Errorf("deviceConfig in the configuration file: %w", err)
		}
	}
	if c.HealthInterval != 0 {
		cfg.Health.Interval.Duration = c.HealthInterval
	}
	if c.RecoverAfter != 0 {
		cfg.Health.RecoverAfter.Duration = c.RecoverAfter
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return device.Config{}, fmt.Errorf("device configuration with flags applied: %w", err)
	}
	return cfg, nil
}

// RunNode serves CSI and the device plugins until ctx ends or one fails.
// With CSI it holds the lock of --root throughout. What can run beside
// another process on the same root (the pod this one replaces) starts
// first: the metrics and health server, device discovery and, with rolling
// updates (PodUID), DRA; the rest once the root is this process's
// (WaitForRoot).
func RunNode(ctx context.Context, c NodeConfig) error {
	if c.DisksDryRun {
		return DisksDryRun(ctx, c.CSIConfig, os.Stdout, "table")
	}
	if c.Devices && c.devices == nil {
		return errors.New("plinth node: the configuration was not validated (NodeConfig.Validate)")
	}
	n := &nodeRun{NodeConfig: c, parts: map[string]func(context.Context) error{}}
	held := make(chan struct{}) // closed once this process holds the root
	if c.MetricsAddress != "" {
		n.metrics = metrics.New()
		n.parts["metrics"] = func(ctx context.Context) error {
			if c.WaitForRoot > 0 {
				// The process this one replaces holds the port until it
				// stops, which is before it lets go of the root.
				return n.metrics.ServeWhenFree(ctx, c.MetricsAddress, held)
			}
			return n.metrics.Serve(ctx, c.MetricsAddress)
		}
		if c.HealthSocket != "" {
			n.parts["health socket"] = func(ctx context.Context) error { return n.metrics.ServeUnix(ctx, c.HealthSocket) }
		}
	}
	if c.Cluster {
		var err error
		if n.rest, err = restConfig(c.Kubeconfig, 50, 100); err != nil {
			return err
		}
		if n.metrics != nil {
			api := metrics.NewAPIRequests()
			if err := n.metrics.Register(api); err != nil {
				return err
			}
			n.rest.Wrap(api.Wrap)
		}
		if n.core, err = kubernetes.NewForConfig(n.rest); err != nil {
			return err
		}
	}
	if c.Devices {
		if err := n.discover(); err != nil {
			return err
		}
	}
	g := newGroup(ctx)
	g.goAll(n.parts)
	n.parts = map[string]func(context.Context) error{}
	lock, err := n.claim(g.ctx)
	if err != nil {
		if ctx.Err() != nil {
			err = nil // stopped while waiting for the root
		}
		return g.stop(err)
	}
	defer lock.Unlock() // after every part stopped
	close(held)
	if c.CSI {
		if err := n.volumes(ctx, lock); err != nil {
			return g.stop(err)
		}
	}
	if c.Devices {
		if err := n.accelerators(); err != nil {
			return g.stop(err)
		}
	}
	if c.Cluster {
		stop, err := n.cluster()
		if err != nil {
			return g.stop(err)
		}
		defer stop()
	}
	klog.InfoS("plinth node started", "version", c.Version, "csi", c.CSI, "devices", c.Devices, "kubeletDir", c.KubeletDir)
	g.goAll(n.parts)
	return g.wait()
}

// claim takes the root (with CSI, the pools' directories too), waiting
// WaitForRoot for a process that holds it. Without CSI the root holds
// DRA's checkpoint, and the lock also stands for the device plugins'
// sockets, whose names are fixed: one process per node serves them.
func (n *nodeRun) claim(ctx context.Context) (*RootLock, error) {
	if n.CSI {
		return WaitRoot(ctx, n.WaitForRoot, func() (*RootLock, error) { return claimRoot(n.CSIConfig) })
	}
	return WaitRoot(ctx, n.WaitForRoot, func() (*RootLock, error) { return LockRoot(n.Root) })
}

// nodeRun is one `plinth node` being put together: each of its sides
// (volumes, accelerators, the cluster's objects) adds the parts it runs.
type nodeRun struct {
	NodeConfig
	parts   map[string]func(context.Context) error
	metrics *metrics.Metrics // nil without --metrics-address
	rest    *restclient.Config
	core    kubernetes.Interface // nil without --cluster

	local   *node.Local   // the node's pools (CSI)
	mounts  volumeMounts  // stage, publish and usage over them (CSI)
	watcher *disk.Watcher // the node's disks, with disk rules
	devices func() []v1alpha1.DeviceStatus
	inv     *device.Inventory // the node's devices (discover)
	dra     *dra.Driver       // nil when DRA has nothing to do
}

// volumes opens the node's pools (the caller holds the root, claim),
// then serves the CSI Node service and registers it with the kubelet.
func (n *nodeRun) volumes(ctx context.Context, _ *RootLock) (err error) {
	// One count of every program the node runs.
	run := mount.Exec{Launches: &mount.Launches{}}
	if n.local, n.watcher, err = openLocal(ctx, n.CSIConfig, run); err != nil {
		return err
	}
	n.mounts = newVolumeMounts(n.CSIConfig, n.local, run)
	// Volumes' IO limits (their VolumeAttributesClasses) are held in the
	// block IO controller of each pod they are published to.
	if lim, err := iolimit.New(n.CgroupRoot); err != nil {
		klog.ErrorS(err, "IO limits of volumes cannot be enforced on this node: a volume with IO limits is published to no pod, and a class with limits is refused", "cgroupRoot", n.CgroupRoot)
		n.mounts.NoLimiter = err
	} else {
		n.mounts.Limiter = lim
		n.parts["IO limits"] = lim.Run
		if err := n.mounts.ReapplyAll(ctx); err != nil {
			klog.ErrorS(err, "Applying volumes' IO limits again after a start")
		}
	}
	sock, err := unixsock.ParseEndpoint(n.Endpoint)
	if err != nil {
		return err
	}
	if n.watcher != nil {
		n.parts["disks"] = n.watcher.Run
	}
	n.parts["CSI"] = func(ctx context.Context) error {
		return serveCSI(ctx, n.CSIConfig, n.Version, n.local, n.mounts, false, n.metrics)
	}
	m := n.metrics
	reg := kubelet.NewCSIRegistration(n.DriverName, sock)
	reg.OnStatus = func(ok bool, msg string) {
		if ok && m != nil {
			m.Registered("csi")
		}
		if n.OnKubeletRegistration != nil {
			n.OnKubeletRegistration(ok, msg)
		}
	}
	if m != nil {
		m.AddReadyCheck("kubelet-csi-registration", func(context.Context) error {
			if !reg.Registered() {
				return errors.New("the kubelet has not registered the CSI driver")
			}
			return nil
		})
	}
	n.parts["kubelet plugin registration"] = func(ctx context.Context) error { return reg.Serve(ctx, n.KubeletDir) }
	return nil
}

// discover finds the node's devices and watches their health; with
// rolling updates (PodUID) it starts DRA too, which can serve beside the
// process this one replaces.
func (n *nodeRun) discover() error {
	cfg, dev := *n.NodeConfig.devices, n.DeviceDevRoot
	host := device.Host{Sysfs: n.DeviceSysfsRoot, Dev: dev, Proc: n.ProcRoot}
	inv := device.NewInventory(host, cfg)
	if _, _, err := inv.Scan(); err != nil {
		return fmt.Errorf("discover devices: %w", err)
	}
	for _, r := range cfg.Resources {
		klog.InfoS("Serving resource", "resource", r.Name, "units", len(inv.Units(r)), "replicas", r.Sharing.Replicas)
	}
	if m := n.metrics; m != nil {
		if err := m.Register(metrics.NewDeviceCollector(deviceSamples(cfg, inv), inv.Transitions)); err != nil {
			return err
		}
	}
	n.inv = inv
	n.devices = func() []v1alpha1.DeviceStatus {
		var out []v1alpha1.DeviceStatus
		for _, r := range cfg.Resources {
			for _, u := range inv.Units(r) {
				out = append(out, v1alpha1.DeviceStatus{Resource: r.Name, ID: u.ID, Healthy: u.Healthy, NUMANode: u.Device.NUMANode})
			}
		}
		return out
	}
	n.parts["device inventory"] = inv.Run
	if n.PodUID == "" {
		return nil
	}
	var err error
	n.dra, err = n.draDriver(cfg, inv)
	return err
}

// accelerators serves the discovered devices: device plugins for the
// resources configured so, the DRA driver for those configured api: dra
// (and while claims it prepared are still prepared) unless discover
// started it. The caller holds the root: the device plugins' sockets have
// fixed names, which two processes cannot share.
func (n *nodeRun) accelerators() error {
	cfg, dev, inv := *n.NodeConfig.devices, n.DeviceDevRoot, n.inv
	m := n.metrics
	dpc := deviceplugin.Config{KubeletDir: n.KubeletDir, CDIDir: n.CDIDir, DevRoot: dev}
	if m != nil {
		dpc.ObserveAllocate = m.ObserveAllocate
		dpc.OnRegistered = func(resource string, _ time.Duration) { m.Registered("device-plugin:" + resource) }
	}
	plugins := pluginResources(cfg)
	mgr, err := deviceplugin.NewManager(dpc, plugins, inv)
	if err != nil {
		return err
	}
	if m != nil {
		m.AddReadyCheck("device-plugins", func(context.Context) error { return mgr.Registered() })
		m.AddLiveCheck("device-plugin-sockets", mgr.Alive)
	}
	n.parts["device plugins"] = mgr.Run
	if n.PodUID == "" {
		if n.dra, err = n.draDriver(cfg, inv); err != nil {
			return err
		}
	}
	driver := n.dra
	if n.core != nil && len(plugins) > 0 {
		// No plugin registers while DRA still offers or holds its
		// resource's devices (a resource switched back).
		var names []string
		for _, r := range plugins {
			names = append(names, r.Name)
		}
		var held func() []string
		if driver != nil {
			held = func() []string { return driver.Held(names) }
		}
		core := n.core
		n.parts["device plugins"] = func(ctx context.Context) error {
			if err := dra.Withdraw(ctx, core, n.DriverName, n.NodeID, plugins, driver != nil, held); err != nil {
				if ctx.Err() != nil {
					return nil // stopped while waiting
				}
				return err
			}
			return mgr.Run(ctx)
		}
	}
	return nil
}

// deviceSamples counts each resource's healthy and unhealthy units for
// the metrics.
func deviceSamples(cfg device.Config, inv *device.Inventory) func() []metrics.DeviceSample {
	return func() []metrics.DeviceSample {
		var out []metrics.DeviceSample
		for _, r := range cfg.Resources {
			s := metrics.DeviceSample{Resource: r.Name}
			for _, u := range inv.Units(r) {
				if u.Healthy {
					s.Healthy++
				} else {
					s.Unhealthy++
				}
			}
			out = append(out, s)
		}
		return out
	}
}

// draDriver is the DRA driver when it has something to do: resources
// configured api: dra, or claims it prepared before that are still
// prepared (the kubelet must be able to unprepare them). Nil otherwise,
// and without the API server or CDI.
func (n *nodeRun) draDriver(cfg device.Config, inv *device.Inventory) (*dra.Driver, error) {
	if n.core == nil || n.CDIDir == "" {
		return nil, nil
	}
	m := n.metrics
	dc := dra.Config{DriverName: n.DriverName, NodeName: n.NodeID, KubeletDir: n.KubeletDir, StateDir: n.Root,
		CDIDir: n.CDIDir, DevRoot: n.DeviceDevRoot, Resources: draResources(cfg), Inventory: inv, Client: n.core,
		// The pod's UID turns on DRA rolling updates: the DaemonSet
		// surges, and this pod serves DRA beside the one it replaces.
		PodUID: types.UID(n.PodUID)}
	if m != nil {
		dc.ObservePrepare = m.ObservePrepare
		dc.OnRegistered = func() { m.Registered("dra") }
	}
	driver, err := dra.New(dc)
	if err != nil || !driver.Needed() {
		return nil, err
	}
	n.parts["DRA"] = driver.Run
	if m != nil {
		m.AddReadyCheck("kubelet-dra-registration", func(context.Context) error { return driver.Registered() })
	}
	return driver, nil
}

// cluster reconciles the node's volume objects and publishes its
// PlinthNode; stop shuts the event broadcaster down.
func (n *nodeRun) cluster() (stop func(), err error) {
	var disks func() []v1alpha1.DiskStatus
	if w := n.watcher; w != nil {
		disks = func() []v1alpha1.DiskStatus { return diskStatuses(w) }
	}
	rec, status, stop, err := newReconciler(n.NodeConfig, n.rest, n.core, n.local, n.devices, disks)
	if err != nil {
		return nil, err
	}
	if n.mounts.Mounts != nil {
		// A volume being moved to another node (its object held) is
		// staged and published for no new pod.
		n.mounts.Mounts.Hold = rec.Held
		// A volume's used bytes: the filesystem at its staging mount
		// where its pool keeps no count of its own.
		rec.Usage = n.mounts
		// A changed class reaches the pods that use the volume now.
		rec.Consumers = n.mounts.Reapply
		rec.CanLimit = n.mounts.CanLimit
	}
	// A pool whose health changes, and a disk that comes or goes, make
	// the volume objects look again (a volume on a gone disk says so);
	// a disk change is published at once, not at the next heartbeat.
	status.OnPoolChange = rec.RequeueVolumes
	if n.watcher != nil {
		n.watcher.OnChange = func(ctx context.Context) {
			if err := status.Publish(ctx, false); err != nil {
				klog.ErrorS(err, "Publish node status after a disk change")
			}
			rec.RequeueVolumes()
		}
	}
	if n.CSI && n.Transfer.Address != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		plinth, err := versioned.NewForConfig(n.rest)
		if err != nil {
			stop()
			return nil, err
		}
		ts, err := newTransfer(ctx, n.Transfer, n.NodeID, n.core, plinth, n.local, n.metrics)
		if err != nil {
			stop()
			return nil, err
		}
		rec.Transfer = ts.client
		status.Transfer = ts.endpoint
		n.parts["transfer"] = ts.serve
	}
	n.parts["volume objects"] = rec.Run
	n.parts["node status"] = status.Run
	return stop, nil
}

// newReconciler connects to the API server for the node's volume objects
// and its PlinthNode: the volume reconciler and the node-status publisher,
// two runners; stop shuts the event broadcaster down.
func newReconciler(c NodeConfig, cfg *restclient.Config, core kubernetes.Interface, local *node.Local, devices func() []v1alpha1.DeviceStatus, disks func() []v1alpha1.DiskStatus) (*reconcile.Reconciler, *nodestatus.Reporter, func(), error) {
	plinth, err := versioned.NewForConfig(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	if local == nil { // devices only: a node with no pools
		if local, err = node.NewLocal(); err != nil {
			return nil, nil, nil, err
		}
	}
	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: core.CoreV1().Events("")})
	events := broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "plinth-node", Host: c.NodeID})
	status := &nodestatus.Reporter{
		NodeName: c.NodeID, Version: c.Version, Pools: local.PoolHealth, Devices: devices, Disks: disks, Plinth: plinth, Core: core, Events: events,
	}
	rec := &reconcile.Reconciler{NodeName: c.NodeID, Local: local, Plinth: plinth, Core: core, Events: events, Status: status}
	return rec, status, broadcaster.Shutdown, nil
}
