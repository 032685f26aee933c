package disk

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Watcher reads the node's disks again every Interval, so that a disk
// that goes away (or comes back) is seen: pools ask it whether their disks
// are present, and the node's status lists what it saw last.
type Watcher struct {
	Host     Host
	Probe    Prober
	Interval time.Duration
	// OnChange, when set, hears that a rescan found disks come or go (the
	// node publishes its status at once). Set it before Run.
	OnChange func(context.Context)

	mu     sync.Mutex
	disks  []Disk
	owners map[string]string // disk ID -> pool, from the plan
	// known is each owned disk as last seen (or as recorded), to list it
	// as missing when it is gone.
	known map[string]Disk
	err   error
	// memo answers rescans' probes while a device is unchanged.
	memo *probeMemo
}

// NewWatcher starts from a scan already made (the plan's) and the pools
// that own disks.
func NewWatcher(h Host, probe Prober, interval time.Duration, plan Plan) *Watcher {
	w := &Watcher{Host: h, Probe: probe, Interval: interval, owners: map[string]string{}, known: map[string]Disk{}}
	for _, d := range plan.Decisions {
		w.disks = append(w.disks, d.Disk)
		if d.Pool != "" {
			w.owners[d.Disk.ID] = d.Pool
		}
	}
	for _, pp := range plan.Pools {
		for _, m := range pp.Missing {
			w.owners[m.ID] = pp.Name
			w.known[m.ID] = Disk{ID: m.ID, Name: m.Name, SizeBytes: m.SizeBytes, Model: m.Model, Serial: m.Serial, WWN: m.WWN, NUMANode: -1}
		}
	}
	w.mark()
	return w
}

// SetOwner records that a disk belongs to a pool (a disk claimed later).
func (w *Watcher) SetOwner(id, poolName string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.owners[id] = poolName
	w.mark()
}

// mark sets plinth's disks' state; mu is held.
func (w *Watcher) mark() {
	for i := range w.disks {
		if p := w.owners[w.disks[i].ID]; p != "" {
			w.disks[i].State, w.disks[i].Pool, w.disks[i].Reasons = StatePlinth, p, nil
			w.known[w.disks[i].ID] = w.disks[i]
		}
	}
}

// Rescan reads the disks now.
func (w *Watcher) Rescan(ctx context.Context) error {
	memo := w.probeMemo()
	disks, err := Scan(ctx, w.Host, memo)
	if err == nil {
		seen := map[string]bool{}
		for _, d := range disks {
			seen[d.Device] = true
		}
		memo.keep(seen)
	}
	changed, err := w.update(disks, err)
	if changed && w.OnChange != nil {
		w.OnChange(ctx)
	}
	return err
}

func (w *Watcher) probeMemo() *probeMemo {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.memo == nil {
		w.memo = newProbeMemo(w.Probe, w.Host.Sysfs)
	}
	return w.memo
}

// update takes a rescan's result; changed: a disk came, went or changed
// state.
func (w *Watcher) update(disks []Disk, err error) (changed bool, _ error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
	if err != nil {
		return false, err
	}
	gone := map[string]bool{}
	for _, d := range w.disks {
		gone[d.ID] = true
	}
	for _, d := range disks {
		delete(gone, d.ID)
	}
	for id := range gone {
		if w.owners[id] != "" {
			klog.InfoS("Disk of a pool is gone", "disk", id, "pool", w.owners[id])
		}
	}
	state := func(ds []Disk) string {
		var b strings.Builder
		for _, d := range ds {
			fmt.Fprintf(&b, "%s=%s:%s;", d.ID, d.Name, d.State)
		}
		return b.String()
	}
	before := state(w.disks)
	w.disks = disks
	w.mark()
	return before != state(w.disks), nil
}

// Run rescans every Interval until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := w.Rescan(ctx); err != nil && ctx.Err() == nil {
				klog.ErrorS(err, "Rescan disks")
			}
		}
	}
}

// Disks returns the disks as last read.
func (w *Watcher) Disks() []Disk {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Disk(nil), w.disks...)
}

// Find returns the present disk with this identity.
func (w *Watcher) Find(id string) (Disk, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, d := range w.disks {
		if d.ID == id {
			return d, true
		}
	}
	return Disk{}, false
}

// Status is every disk as last read, plinth's pools' missing disks
// included (StateMissing), sorted by identity.
func (w *Watcher) Status() []Disk {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]Disk(nil), w.disks...)
	present := map[string]bool{}
	for _, d := range w.disks {
		present[d.ID] = true
	}
	for id, p := range w.owners {
		if present[id] {
			continue
		}
		d := w.known[id]
		d.ID, d.State, d.Pool, d.Reasons = id, StateMissing, p, []string{"not present: last seen as " + d.Name}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
