package dra

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"google.golang.org/grpc"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/unixsock"
)

// Config wires a Driver.
type Config struct {
	DriverName string
	NodeName   string
	KubeletDir string
	// StateDir holds the checkpoint of prepared claims.
	StateDir string
	CDIDir   string
	// DevRoot is where the device nodes are on the host.
	DevRoot string
	// Resources are the DeviceConfig's resources configured `api: dra`.
	Resources []device.Resource
	Inventory *device.Inventory
	Client    kubernetes.Interface
	// HandoverPoll is how often the start checks that the kubelet no longer
	// counts a resource's device-plugin devices (default 2s).
	HandoverPoll time.Duration
	// OnRegistered, when set, hears every registration the kubelet
	// confirms (at start and after each kubelet restart).
	OnRegistered func()
	// ObservePrepare, when set, hears every claim prepared (not the
	// answers from the checkpoint) and how long it took.
	ObservePrepare func(devices int, d time.Duration)
	// PodUID is the UID of the pod this driver runs in ($POD_UID, from
	// the downward API), "" outside a pod. Set, the driver supports a
	// rolling update (kubeletplugin.RollingUpdate): its sockets are named
	// after the pod, so that the next pod of a DaemonSet rolled out with
	// surge registers beside this one and the kubelet always has a DRA
	// service; the two share the checkpoint under a file lock.
	PodUID types.UID
}

// Driver is plinth node's DRA kubelet plugin.
type Driver struct {
	cfg Config
	cp  checkpoint
	cdi cdiSpecs

	mu       sync.Mutex
	prepared map[types.UID]PreparedClaim
	// unhealthy is when each device was first seen unhealthy (the taint's
	// timeAdded); a device leaves it when it is healthy again.
	unhealthy  map[string]time.Time
	registered bool
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

// New loads the checkpoint and removes the CDI specs of claims it does not
// list (a crash between writing one and recording the claim).
func New(cfg Config) (*Driver, error) {
	if cfg.HandoverPoll == 0 {
		cfg.HandoverPoll = 2 * time.Second
	}
	if cfg.CDIDir == "" {
		return nil, errors.New("DRA needs a CDI directory (--cdi-dir): devices reach containers through CDI")
	}
	if err := CheckPodUID(string(cfg.PodUID)); err != nil {
		return nil, err
	}
	d := &Driver{
		cfg:       cfg,
		cp:        checkpoint{path: filepath.Join(cfg.StateDir, "dra", "prepared.json")},
		cdi:       cdiSpecs{dir: cfg.CDIDir, driver: cfg.DriverName, devRoot: cfg.DevRoot},
		unhealthy: map[string]time.Time{},
	}
	if cfg.PodUID != "" {
		// Another instance may be preparing a claim now, between writing
		// its spec and recording it: wait for its call to end.
		if err := os.MkdirAll(d.dataDir(), 0o750); err != nil {
			return nil, fmt.Errorf("DRA plugin directory: %w", err)
		}
		lock, err := fileutil.LockFile(d.lockPath(), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock the DRA state against another instance: %w", err)
		}
		defer lock.Close()
	}
	var err error
	if d.prepared, err = d.cp.load(); err != nil {
		return nil, err
	}
	orphans, err := d.cdi.orphans(d.prepared)
	if err != nil {
		return nil, fmt.Errorf("list CDI specs: %w", err)
	}
	for _, uid := range orphans {
		if err := d.cdi.remove(uid); err != nil {
			return nil, err
		}
		klog.InfoS("Removed the CDI spec of a claim that was never recorded as prepared", "claim", uid)
	}
	return d, nil
}

// podUID is what a pod's UID may look like here (a UUID is).
var podUID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`)

// CheckPodUID refuses a pod UID (Config.PodUID, "" for none) that is not
// letters, digits and dashes: it names the DRA sockets
// (<driver>-<uid>-reg.sock, dra-<uid>.sock), where a slash or a dot-dot
// would walk out of the kubelet's directories.
func CheckPodUID(uid string) error {
	if uid != "" && !podUID.MatchString(uid) {
		return fmt.Errorf("pod UID %q is not one (letters, digits and dashes; the downward API's metadata.uid)", uid)
	}
	return nil
}

// Needed reports whether the driver has work on this node: resources to
// serve, or claims it prepared that the kubelet has yet to unprepare (a
// resource switched back to the device plugin while pods held its devices).
func (d *Driver) Needed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.cfg.Resources) > 0 || len(d.prepared) > 0
}

// Held lists the resources, among names, that prepared claims hold devices of.
func (d *Driver) Held(names []string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, n := range names {
	claims:
		for _, p := range d.prepared {
			for _, pd := range p.Devices {
				if pd.Resource == n {
					out = append(out, n)
					break claims
				}
			}
		}
	}
	return out
}

// Run waits until the kubelet no longer counts any of the resources as a
// device plugin's, registers with the kubelet, publishes the node's
// ResourceSlice and keeps it current until ctx ends.
func (d *Driver) Run(ctx context.Context) error {
	if err := d.awaitHandover(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting
		}
		return err
	}
	dataDir := d.dataDir()
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return fmt.Errorf("DRA plugin directory: %w", err)
	}
	d.sweepStale()
	listen := func(_ context.Context, path string) (net.Listener, error) { return unixsock.Listen(path, 0o600) }
	opts := []kubeletplugin.Option{
		kubeletplugin.DriverName(d.cfg.DriverName),
		kubeletplugin.NodeName(d.cfg.NodeName),
		kubeletplugin.KubeClient(d.cfg.Client),
		kubeletplugin.RegistrarDirectoryPath(filepath.Join(d.cfg.KubeletDir, "plugins_registry")),
		kubeletplugin.RegistrarListener(listen),
		kubeletplugin.PluginDataDirectoryPath(dataDir),
		kubeletplugin.PluginListener(listen),
		kubeletplugin.GRPCInterceptor(d.watchRegistration),
	}
	if d.cfg.PodUID != "" {
		// Sockets named after the pod (<driver>-<uid>-reg.sock, a hash
		// where that is too long; dra-<uid>.sock), calls serialized with
		// the other instance's through dataDir/serialize.lock.
		opts = append(opts, kubeletplugin.RollingUpdate(d.cfg.PodUID))
	} else {
		// <driver>-reg.sock is the CSI driver's registration socket.
		opts = append(opts, kubeletplugin.RegistrarSocketFilename(d.cfg.DriverName+"-dra-reg.sock"))
	}
	plug, err := kubeletplugin.Start(ctx, d, opts...)
	if err != nil {
		return fmt.Errorf("start the DRA kubelet plugin: %w", err)
	}
	defer plug.Stop()
	names := make([]string, 0, len(d.cfg.Resources))
	for _, r := range d.cfg.Resources {
		names = append(names, r.Name)
	}
	klog.InfoS("Serving devices through DRA", "driver", d.cfg.DriverName, "resources", names, "dataDir", dataDir, "podUID", d.cfg.PodUID)
	for {
		changed := d.cfg.Inventory.Changed()
		if err := plug.PublishResources(ctx, d.resources()); err != nil {
			klog.ErrorS(err, "Publish ResourceSlices")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// staleMiddle is what stands between "<driver>-" and "-reg.sock" in the
// name of a registration socket of this driver's DRA service: "dra"
// without rolling updates, a pod UID, or the 11 characters of its hash
// (kubeletplugin.RollingUpdateRegistrarSocketFile).
var staleMiddle = regexp.MustCompile(`^(dra|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[A-Za-z0-9_-]{11})$`)

// sweepStale removes the DRA sockets of earlier instances of this driver
// on this node that no process serves any more: with rolling updates each
// pod's are named after it, and a pod that did not stop cleanly (kill -9,
// a node that lost power) leaves them behind, where the kubelet keeps
// trying them. A socket that answers is another instance's and stays; so
// do this instance's own names, and anything that is not a socket.
func (d *Driver) sweepStale() {
	reg := filepath.Join(d.cfg.KubeletDir, "plugins_registry")
	var own []string
	if d.cfg.PodUID != "" {
		own = []string{filepath.Join(reg, kubeletplugin.RollingUpdateRegistrarSocketFile(reg, d.cfg.DriverName, d.cfg.PodUID)),
			filepath.Join(d.dataDir(), "dra-"+string(d.cfg.PodUID)+".sock")}
	}
	var candidates []string
	if ents, err := os.ReadDir(d.dataDir()); err == nil {
		for _, e := range ents {
			if n := e.Name(); n == "dra.sock" || (strings.HasPrefix(n, "dra-") && strings.HasSuffix(n, ".sock")) {
				candidates = append(candidates, filepath.Join(d.dataDir(), n))
			}
		}
	}
	if ents, err := os.ReadDir(reg); err == nil {
		for _, e := range ents {
			mid, ok := strings.CutPrefix(e.Name(), d.cfg.DriverName+"-")
			if mid, ok = strings.CutSuffix(mid, "-reg.sock"); ok && staleMiddle.MatchString(mid) {
				candidates = append(candidates, filepath.Join(reg, e.Name()))
			}
		}
	}
	for _, p := range candidates {
		if slices.Contains(own, p) {
			continue
		}
		if fi, err := os.Lstat(p); err != nil || fi.Mode().Type() != os.ModeSocket {
			continue
		}
		if err := unixsock.RemoveStale(p); err != nil {
			continue // served (another instance) or not to be judged
		}
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			klog.InfoS("Removed a DRA socket no process serves (an instance that did not stop cleanly)", "socket", p)
		}
	}
}

// dataDir is the DRA plugin's directory under the kubelet's: its service
// socket and, with rolling updates, the lock both instances share.
func (d *Driver) dataDir() string {
	return filepath.Join(d.cfg.KubeletDir, "plugins", d.cfg.DriverName+"-dra")
}

// lockPath is the file kubeletplugin locks around every call when rolling
// updates are on (kubeletplugin.RollingUpdate: <data dir>/serialize.lock).
func (d *Driver) lockPath() string { return filepath.Join(d.dataDir(), "serialize.lock") }

// reloadLocked reads the checkpoint again: with rolling updates another
// instance may have prepared or unprepared claims since this one last
// looked (the kubelet may call either). The caller holds d.mu, and
// kubeletplugin holds the lock both instances share.
func (d *Driver) reloadLocked() error {
	if d.cfg.PodUID == "" {
		return nil // the only instance: what it holds is the checkpoint
	}
	p, err := d.cp.load()
	if err != nil {
		return err
	}
	d.prepared = p
	return nil
}

// watchRegistration hears the kubelet's answer to the registration (the
// interceptor sees the registrar's calls too).
func (d *Driver) watchRegistration(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if st, ok := req.(*registerapi.RegistrationStatus); ok {
		d.mu.Lock()
		d.registered = st.PluginRegistered && err == nil
		d.mu.Unlock()
		if st.PluginRegistered {
			klog.InfoS("The kubelet registered the DRA driver", "driver", d.cfg.DriverName)
			if d.cfg.OnRegistered != nil {
				d.cfg.OnRegistered()
			}
		} else {
			klog.ErrorS(nil, "The kubelet refused the DRA driver", "driver", d.cfg.DriverName, "error", st.Error)
		}
	}
	return resp, err
}

// Registered reports whether the kubelet has registered the driver
// (readiness).
func (d *Driver) Registered() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.registered {
		return errors.New("the kubelet has not registered the DRA driver")
	}
	return nil
}

// resources is the node's pool: every unit of the DRA resources, 64 to a
// slice (the most a slice with taints may hold).
func (d *Driver) resources() resourceslice.DriverResources {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	var devs []resourceapi.Device
	seen := map[string]bool{}
	for _, r := range d.cfg.Resources {
		units := d.cfg.Inventory.Units(r)
		for _, u := range units {
			name := DeviceName(u.Device)
			seen[name] = true
			if u.Healthy {
				delete(d.unhealthy, name)
			} else if _, ok := d.unhealthy[name]; !ok {
				d.unhealthy[name] = now
				klog.InfoS("Device tainted in its ResourceSlice", "device", name, "taint", TaintKey, "reason", TaintReason)
			}
		}
		devs = append(devs, Devices(r, units, func(name string) time.Time { return d.unhealthy[name] })...)
	}
	for name := range d.unhealthy {
		if !seen[name] {
			delete(d.unhealthy, name)
		}
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].Name < devs[j].Name })
	var slices []resourceslice.Slice
	for len(devs) > 0 {
		n := min(len(devs), resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures)
		slices = append(slices, resourceslice.Slice{Devices: devs[:n]})
		devs = devs[n:]
	}
	if len(slices) == 0 {
		slices = []resourceslice.Slice{{}} // an empty pool says "none here", not "unknown"
	}
	return resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{d.cfg.NodeName: {Slices: slices}}}
}

// unit finds the unit behind a slice's device name among the DRA resources.
func (d *Driver) unit(name string) (device.Resource, device.UnitStatus, bool) {
	for _, r := range d.cfg.Resources {
		for _, u := range d.cfg.Inventory.Units(r) {
			if DeviceName(u.Device) == name {
				return r, u, true
			}
		}
	}
	return device.Resource{}, device.UnitStatus{}, false
}

// PrepareResourceClaims writes each claim's CDI spec and records the
// claim before answering; a claim already recorded is answered from the
// record (the kubelet asks again after its own restart).
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	d.mu.Lock()
	err := d.reloadLocked()
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, c := range claims {
		out[c.UID] = d.prepare(ctx, c)
	}
	return out, nil
}

func (d *Driver) prepare(ctx context.Context, c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	start := time.Now()
	logger := klog.FromContext(ctx).WithValues("claim", klog.KObj(c), "uid", c.UID)
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.prepared[c.UID]; ok {
		if !d.cdi.valid(c.UID) {
			// The spec went (a cleared /var/run/cdi) while the claim stayed:
			// write it again from the record.
			if err := d.rewriteLocked(c.UID, p); err != nil {
				return kubeletplugin.PrepareResult{Err: err}
			}
		}
		logger.V(4).Info("Claim already prepared")
		return result(p)
	}
	if err := checkUID(c.UID); err != nil {
		return kubeletplugin.PrepareResult{Err: err}
	}
	if c.Status.Allocation == nil {
		return kubeletplugin.PrepareResult{Err: fmt.Errorf("claim %s is not allocated", klog.KObj(c))}
	}
	var devs []claimDevice
	byName := map[string]int{}
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver != d.cfg.DriverName {
			continue
		}
		if r.Pool != d.cfg.NodeName {
			return kubeletplugin.PrepareResult{Err: fmt.Errorf("device %s/%s of claim %s is in another node's pool", r.Pool, r.Device, klog.KObj(c))}
		}
		if i, ok := byName[r.Device]; ok {
			devs[i].requests = append(devs[i].requests, r.Request)
			continue
		}
		res, u, ok := d.unit(r.Device)
		if !ok {
			return kubeletplugin.PrepareResult{Err: fmt.Errorf("device %s of claim %s is not a device of this node", r.Device, klog.KObj(c))}
		}
		if !u.Healthy {
			return kubeletplugin.PrepareResult{Err: fmt.Errorf("device %s of claim %s is unhealthy (%s)", r.Device, klog.KObj(c), TaintReason)}
		}
		admin := r.AdminAccess != nil && *r.AdminAccess
		if !admin {
			if other, ok := d.holderLocked(r.Device); ok {
				return kubeletplugin.PrepareResult{Err: fmt.Errorf("device %s of claim %s is in use by claim %s", r.Device, klog.KObj(c), other)}
			}
		}
		byName[r.Device] = len(devs)
		devs = append(devs, claimDevice{res: res, dev: u.Device, name: r.Device, requests: []string{r.Request}, admin: admin})
	}
	if len(devs) == 0 {
		return kubeletplugin.PrepareResult{} // none of this driver's devices: nothing to prepare
	}
	if err := d.cdi.write(c.UID, devs); err != nil {
		return kubeletplugin.PrepareResult{Err: err}
	}
	p := PreparedClaim{Namespace: c.Namespace, Name: c.Name}
	for _, cd := range devs {
		p.Devices = append(p.Devices, PreparedDevice{Requests: cd.requests, Pool: d.cfg.NodeName, Device: cd.name,
			Resource: cd.res.Name, ID: cd.dev.ID, CDIIDs: []string{d.cdi.deviceID(c.UID, cd.name)}, AdminAccess: cd.admin})
	}
	d.prepared[c.UID] = p
	if err := d.cp.save(d.prepared); err != nil {
		delete(d.prepared, c.UID)
		_ = d.cdi.remove(c.UID)
		return kubeletplugin.PrepareResult{Err: err}
	}
	if d.cfg.ObservePrepare != nil {
		d.cfg.ObservePrepare(len(devs), time.Since(start))
	}
	logger.V(2).Info("Claim prepared", "devices", len(devs))
	return result(p)
}

// holderLocked is the prepared claim that holds device name, if any (a
// claim with admin access holds nothing).
func (d *Driver) holderLocked(name string) (string, bool) {
	for uid, p := range d.prepared {
		for _, pd := range p.Devices {
			if pd.Device == name && !pd.AdminAccess {
				return p.Namespace + "/" + p.Name + " (" + string(uid) + ")", true
			}
		}
	}
	return "", false
}

// rewriteLocked writes a recorded claim's CDI spec again.
func (d *Driver) rewriteLocked(uid types.UID, p PreparedClaim) error {
	var devs []claimDevice
	for _, pd := range p.Devices {
		res, u, ok := d.unit(pd.Device)
		if !ok {
			return fmt.Errorf("device %s of prepared claim %s/%s is gone", pd.Device, p.Namespace, p.Name)
		}
		devs = append(devs, claimDevice{res: res, dev: u.Device, name: pd.Device, requests: pd.Requests, admin: pd.AdminAccess})
	}
	return d.cdi.write(uid, devs)
}

func result(p PreparedClaim) kubeletplugin.PrepareResult {
	var r kubeletplugin.PrepareResult
	for _, pd := range p.Devices {
		r.Devices = append(r.Devices, kubeletplugin.Device{Requests: pd.Requests, PoolName: pd.Pool, DeviceName: pd.Device, CDIDeviceIDs: pd.CDIIDs})
	}
	return r
}

// UnprepareResourceClaims removes each claim's CDI spec, then its record.
// A claim that is not prepared is not an error.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := make(map[types.UID]error, len(claims))
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.reloadLocked(); err != nil {
		return nil, err
	}
	for _, c := range claims {
		if err := checkUID(c.UID); err != nil {
			out[c.UID] = err
			continue
		}
		if _, ok := d.prepared[c.UID]; !ok {
			out[c.UID] = d.cdi.remove(c.UID)
			continue
		}
		if err := d.cdi.remove(c.UID); err != nil {
			out[c.UID] = err
			continue
		}
		p := d.prepared[c.UID]
		delete(d.prepared, c.UID)
		if err := d.cp.save(d.prepared); err != nil {
			d.prepared[c.UID] = p
			out[c.UID] = err
			continue
		}
		out[c.UID] = nil
		klog.FromContext(ctx).V(2).Info("Claim unprepared", "claim", c.String(), "uid", c.UID)
	}
	return out, nil
}

// HandleError logs errors of the background work (publishing slices);
// the helper retries them.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	klog.FromContext(ctx).Error(err, msg)
}

// WatchHealthStatus tells the kubelet each device's health: at once, on
// every change, and every 10 s (the kubelet calls a device whose health
// was not refreshed within 30 s unknown).
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		changed := d.cfg.Inventory.Changed()
		select {
		case <-ctx.Done():
			return nil
		case reports <- d.health():
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

func (d *Driver) health() kubeletplugin.DeviceHealthReport {
	now := time.Now()
	var rep kubeletplugin.DeviceHealthReport
	for _, r := range d.cfg.Resources {
		for _, u := range d.cfg.Inventory.Units(r) {
			h := kubeletplugin.DeviceHealth{PoolName: d.cfg.NodeName, DeviceName: DeviceName(u.Device), Health: kubeletplugin.HealthStatusHealthy, LastUpdated: now}
			if !u.Healthy {
				h.Health, h.Message = kubeletplugin.HealthStatusUnhealthy, "a device node of "+u.Device.ID+" is missing"
			}
			rep.Devices = append(rep.Devices, h)
		}
	}
	return rep
}

// Names lists resources by name, for messages.
func Names(rs []device.Resource) string {
	var n []string
	for _, r := range rs {
		n = append(n, r.Name)
	}
	return strings.Join(n, ", ")
}
