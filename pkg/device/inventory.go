package device

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
)

// UnitStatus is a unit of a resource and whether it is healthy now.
type UnitStatus struct {
	Unit
	Healthy bool
}

type tracked struct {
	dev Device // as first seen: its nodes must stay
	// healthy is what is advertised; goodSince is when the device was last
	// seen turning good (zero while bad), for the recovery hysteresis.
	healthy   bool
	goodSince time.Time
}

// Inventory keeps the node's devices and their health up to date: it
// rescans sysfs every Interval and whenever a device node appears or
// disappears under the /dev root. A device whose nodes vanish is unhealthy
// at once; one that comes back is healthy again only after RecoverAfter.
type Inventory struct {
	host Host
	cfg  Config
	now  func() time.Time

	mu      sync.Mutex
	devices map[string]*tracked
	changed chan struct{} // closed and replaced on every change
	// Transitions counts health changes, for metrics and tests.
	transitions int
}

// NewInventory returns an Inventory; call Scan or Run to fill it.
func NewInventory(host Host, cfg Config) *Inventory {
	return &Inventory{host: host, cfg: cfg, now: time.Now, devices: map[string]*tracked{}, changed: make(chan struct{})}
}

// Changed returns a channel closed at the next change of any resource.
func (inv *Inventory) Changed() <-chan struct{} {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.changed
}

// Units returns the units of resource r (sorted by ID) with their health.
func (inv *Inventory) Units(r Resource) []UnitStatus {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	var devs []Device
	for _, t := range inv.devices {
		if r.Selector.Matches(t.dev) && inv.cfg.owner(t.dev) == r.Name {
			devs = append(devs, t.dev)
		}
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].ID < devs[j].ID })
	var out []UnitStatus
	for _, u := range Units(devs, r.Sharing.Replicas) {
		out = append(out, UnitStatus{Unit: u, Healthy: inv.devices[u.Device.ID].healthy})
	}
	return out
}

// Scan rediscovers devices and updates health; it reports whether anything
// a kubelet would see changed, and when a recovering device is due.
func (inv *Inventory) Scan() (changed bool, recheck time.Duration, err error) {
	devs, err := inv.host.Discover(inv.cfg.Globs())
	if err != nil {
		return false, 0, err
	}
	now := inv.now()
	inv.mu.Lock()
	defer inv.mu.Unlock()
	seen := map[string]bool{}
	for _, d := range devs {
		seen[d.ID] = true
		t, ok := inv.devices[d.ID]
		if !ok {
			inv.devices[d.ID] = &tracked{dev: d, healthy: true, goodSince: now}
			klog.InfoS("Device found", "device", d.ID, "driver", d.Driver, "numaNode", d.NUMANode, "nodes", len(d.Nodes))
			changed = true
			continue
		}
		good := inv.nodesPresent(t.dev)
		switch {
		case !good && t.healthy:
			t.healthy, t.goodSince = false, time.Time{}
			inv.transitions++
			changed = true
			klog.InfoS("Device unhealthy", "device", d.ID, "reason", "device node missing")
		case !good:
			t.goodSince = time.Time{}
		case good && !t.healthy && t.goodSince.IsZero():
			t.goodSince = now
			recheck = minPositive(recheck, inv.cfg.Health.RecoverAfter.Duration)
		case good && !t.healthy && now.Sub(t.goodSince) >= inv.cfg.Health.RecoverAfter.Duration:
			t.healthy = true
			inv.transitions++
			changed = true
			klog.InfoS("Device healthy again", "device", d.ID, "after", now.Sub(t.goodSince))
		case good && !t.healthy:
			recheck = minPositive(recheck, inv.cfg.Health.RecoverAfter.Duration-now.Sub(t.goodSince))
		}
	}
	for id := range inv.devices {
		if !seen[id] {
			delete(inv.devices, id)
			klog.InfoS("Device removed", "device", id)
			changed = true
		}
	}
	if changed {
		close(inv.changed)
		inv.changed = make(chan struct{})
	}
	return changed, recheck, nil
}

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 || b < a {
		return max(b, time.Millisecond)
	}
	return a
}

func (inv *Inventory) nodesPresent(d Device) bool {
	for _, n := range append(append([]Node{}, d.Nodes...), d.SharedNodes...) {
		if _, err := os.Stat(filepath.Join(inv.host.Dev, n.Path)); err != nil {
			return false
		}
	}
	return true
}

// Transitions is how many health changes the inventory has seen.
func (inv *Inventory) Transitions() int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.transitions
}

// logServed says once, after the first scan, how many devices each
// resource serves; a node with none says so plainly.
func (inv *Inventory) logServed() {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	per := map[string]int{}
	for _, t := range inv.devices {
		if owner := inv.cfg.owner(t.dev); owner != "" {
			per[owner]++
		}
	}
	total := 0
	for _, r := range inv.cfg.Resources {
		total += per[r.Name]
		klog.InfoS("Devices served", "resource", r.Name, "devices", per[r.Name])
	}
	if total == 0 {
		klog.InfoS("No accelerators found: this node serves 0 devices (the device plugins stay registered and advertise any that appear)", "globs", inv.cfg.Globs())
	}
}

// Run scans until ctx ends: every Interval, shortly after any change under
// the /dev root, and when a recovering device is due.
func (inv *Inventory) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	inv.watchDev(w)
	tick := time.NewTicker(inv.cfg.Health.Interval.Duration)
	defer tick.Stop()
	var due <-chan time.Time
	scan := func() {
		_, recheck, err := inv.Scan()
		if err != nil {
			klog.ErrorS(err, "Device scan failed")
		}
		if recheck > 0 {
			due = time.After(recheck)
		}
	}
	scan()
	inv.logServed()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			scan()
		case <-due:
			due = nil
			scan()
		case <-debounce:
			debounce = nil
			inv.watchDev(w) // new subdirectories (dri, accel, vfio)
			scan()
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if debounce == nil && ev.Op&(fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 {
				debounce = time.After(20 * time.Millisecond)
			}
		case err := <-w.Errors:
			klog.ErrorS(err, "Watching device nodes")
		}
	}
}

func (inv *Inventory) watchDev(w *fsnotify.Watcher) {
	_ = w.Add(inv.host.Dev)
	for _, sub := range []string{"dri", "accel", "vfio"} {
		_ = w.Add(filepath.Join(inv.host.Dev, sub))
	}
}
