package iolimit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
)

// Limiter applies limits to pods' cgroups and keeps them applied to
// containers started later in those pods (cgroup v1) until Forget.
type Limiter struct {
	base string // the hierarchy: root/blkio (v1) or root (v2), symlinks resolved
	v2   bool

	mu      sync.Mutex
	keys    map[string]string // key → its pod's UID
	pods    map[string]*pod   // pod UID → pod with keys
	w       *fsnotify.Watcher // while Run runs (v1)
	watched map[string]*pod   // directory watched by w → its pod
	running bool
}

// pod is one pod's rules. Its mutex orders everything written to the
// pod's cgroups and every change of its watches; Limiter.mu is taken
// under it, never the other way round.
type pod struct {
	uid string

	mu    sync.Mutex
	dead  bool            // its last key was forgotten: no longer in Limiter.pods
	dir   string          // its cgroup directory; "" until found, and once removed
	rules map[string]rule // key → its rule
}

type rule struct {
	devs []Device
	l    Limits
}

// want is what the pod's cgroups must hold: for each device, the tightest
// of the limits of the keys that name it.
func (p *pod) want() map[Device]Limits {
	m := map[Device]Limits{}
	for _, r := range p.rules {
		for _, d := range r.devs {
			m[d] = m[d].tightest(r.l)
		}
	}
	return m
}

// New returns a Limiter for the cgroup filesystem mounted at root (as
// this process sees it: /sys/fs/cgroup, or where a container has the
// host's): cgroup v1 where root/blkio has blk-throttle, else cgroup v2
// where root/cgroup.controllers lists io.
func New(root string) (*Limiter, error) {
	root = filepath.Clean(root)
	x := &Limiter{
		keys:    map[string]string{},
		pods:    map[string]*pod{},
		watched: map[string]*pod{},
	}
	if fi, err := os.Stat(filepath.Join(root, "blkio", fileReadIOPS)); err == nil && fi.Mode().IsRegular() {
		x.base = filepath.Join(root, "blkio")
	} else if b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers")); err == nil && slices.Contains(strings.Fields(string(b)), "io") {
		x.base, x.v2 = root, true
	} else {
		return nil, fmt.Errorf("%s: %w", root, ErrUnsupported)
	}
	// root is configuration, trusted: a symlink there is taken (blkio may
	// be one to a co-mounted hierarchy). Nothing below it is followed.
	base, err := filepath.EvalSymlinks(x.base)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", x.base, err)
	}
	x.base = base
	return x, nil
}

// Version is the cgroup version limits are written in: 1 or 2.
func (x *Limiter) Version() int {
	if x.v2 {
		return 2
	}
	return 1
}

// Apply sets l for devs in the cgroup of the pod podUID, for key (one
// volume published to that pod). Zero fields clear that limit; zero
// Limits forget key. Calling it again changes the limits in place. Where
// several keys of a pod name one device, the tightest of their limits
// holds. A pod without a cgroup yet is ErrPodNotFound; a limit the kernel
// refuses fails naming the file.
//
// On cgroup v1 the rules are written to the pod's cgroup and each below
// it, and, while Run runs, to each cgroup made below it later.
func (x *Limiter) Apply(ctx context.Context, key string, podUID string, devs []Device, l Limits) error {
	if key == "" {
		return fmt.Errorf("empty key: %w", ErrInvalid)
	}
	if !validPodUID(podUID) {
		return fmt.Errorf("pod UID %q: %w", podUID, ErrInvalid)
	}
	if len(devs) == 0 {
		return fmt.Errorf("no devices for %s: %w", key, ErrInvalid)
	}
	for _, d := range devs {
		if err := d.validate(); err != nil {
			return err
		}
	}
	if l.IsZero() {
		return x.Forget(ctx, key)
	}
	x.mu.Lock()
	prev, ok := x.keys[key]
	x.mu.Unlock()
	if ok && prev != podUID {
		// The key names another pod now: leave the old one first.
		if err := x.Forget(ctx, key); err != nil {
			return err
		}
	}

	p := x.lockPod(podUID)
	defer p.mu.Unlock()
	if _, err := x.podDir(p); err != nil {
		if len(p.rules) == 0 {
			x.drop(p)
		}
		return err
	}
	before := p.want()
	old, had := p.rules[key]
	p.rules[key] = rule{devs: slices.Clone(devs), l: l}
	after := p.want()
	if err := x.sync(ctx, p, p.dir, after, gone(before, after)); err != nil {
		// The key's rules stay what they were, so that its pod's other
		// keys are not held up by this one: the last limits, or none.
		if had {
			p.rules[key] = old
		} else {
			delete(p.rules, key)
		}
		if p.dir != "" {
			if rerr := x.sync(ctx, p, p.dir, before, gone(after, before)); rerr != nil {
				klog.FromContext(ctx).Error(rerr, "Restore IO limits", "podUID", podUID, "cgroup", p.dir)
			}
		}
		if len(p.rules) == 0 {
			x.drop(p)
		}
		return fmt.Errorf("apply IO limits of %s to pod %s: %w", key, podUID, err)
	}
	x.mu.Lock()
	x.keys[key] = podUID
	x.mu.Unlock()
	klog.FromContext(ctx).V(2).Info("IO limits applied", "key", key, "podUID", podUID, "cgroup", p.dir, "devices", devs, "limits", l)
	return nil
}

// Forget stops keeping key's limits (its volume was unpublished from its
// pod) and removes its rules from the pod's cgroups if they are still
// there; a pod cgroup that is gone is no error. A key not known is no
// error either.
func (x *Limiter) Forget(ctx context.Context, key string) error {
	var p *pod
	for {
		x.mu.Lock()
		uid, ok := x.keys[key]
		p = x.pods[uid]
		x.mu.Unlock()
		if !ok || p == nil {
			return nil
		}
		p.mu.Lock()
		if !p.dead {
			break
		}
		p.mu.Unlock() // dropped meanwhile: look again
	}
	defer p.mu.Unlock()
	uid := p.uid
	x.mu.Lock()
	if x.keys[key] == uid {
		delete(x.keys, key)
	}
	x.mu.Unlock()
	if _, ok := p.rules[key]; !ok {
		return nil
	}
	before := p.want()
	delete(p.rules, key)
	after := p.want()
	var err error
	if _, ferr := x.podDir(p); ferr == nil {
		err = x.sync(ctx, p, p.dir, after, gone(before, after))
	} else if !errors.Is(ferr, ErrPodNotFound) {
		err = ferr
	}
	if errors.Is(err, ErrPodNotFound) {
		err = nil
	}
	if len(p.rules) == 0 {
		x.drop(p)
	}
	if err != nil {
		return fmt.Errorf("remove IO limits of %s from pod %s: %w", key, uid, err)
	}
	klog.FromContext(ctx).V(2).Info("IO limits forgotten", "key", key, "podUID", uid)
	return nil
}

// Run serves the watches of cgroup v1 pod cgroups until ctx ends: a
// cgroup made below a pod's gets its rules as soon as it appears. Call it
// in a goroutine, once; on cgroup v2 it only waits for ctx.
func (x *Limiter) Run(ctx context.Context) error {
	if x.v2 {
		<-ctx.Done()
		return nil
	}
	logger := klog.FromContext(ctx)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch pod cgroups: %w", err)
	}
	x.mu.Lock()
	if x.running {
		x.mu.Unlock()
		w.Close()
		return errors.New("iolimit: Run is already running")
	}
	x.running, x.w = true, w
	x.mu.Unlock()
	defer func() {
		x.mu.Lock()
		x.running, x.w = false, nil
		clear(x.watched)
		x.mu.Unlock()
		w.Close()
	}()

	// Pods applied before Run: watch them, and write what was made since.
	x.resync(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			logger.Error(err, "Watching pod cgroups")
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				x.resync(ctx) // events were lost: look at every pod again
			}
		case ev := <-w.Events:
			if ev.Has(fsnotify.Create) {
				x.created(ctx, ev.Name)
			}
			if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
				x.removed(ctx, ev.Name)
			}
		}
	}
}

// lockPod returns the pod uid, made if need be, locked.
// Clear removes the rules for devs from the pod podUID's cgroups that no
// key of this Limiter holds: rules an earlier process wrote for a volume
// whose limits were lifted while no process kept them (a crash between
// the change and its application). Rules another key holds on one of
// devs are kept as that key wants them. A pod without a cgroup is no
// error.
func (x *Limiter) Clear(ctx context.Context, podUID string, devs []Device) error {
	if !validPodUID(podUID) {
		return fmt.Errorf("pod UID %q: %w", podUID, ErrInvalid)
	}
	for _, d := range devs {
		if err := d.validate(); err != nil {
			return err
		}
	}
	p := x.lockPod(podUID)
	defer p.mu.Unlock()
	defer func() {
		if len(p.rules) == 0 {
			x.drop(p)
		}
	}()
	if _, err := x.podDir(p); err != nil {
		if errors.Is(err, ErrPodNotFound) {
			return nil
		}
		return err
	}
	want := p.want()
	var clear []Device
	for _, d := range devs {
		if _, held := want[d]; !held {
			clear = append(clear, d)
		}
	}
	if len(clear) == 0 {
		return nil
	}
	err := x.sync(ctx, p, p.dir, want, clear)
	if errors.Is(err, ErrPodNotFound) {
		return nil
	}
	return err
}

func (x *Limiter) lockPod(uid string) *pod {
	for {
		x.mu.Lock()
		p := x.pods[uid]
		if p == nil {
			p = &pod{uid: uid, rules: map[string]rule{}}
			x.pods[uid] = p
		}
		x.mu.Unlock()
		p.mu.Lock()
		if !p.dead {
			return p
		}
		p.mu.Unlock() // dropped meanwhile: take the new one
	}
}

// drop forgets p, its last key gone: its watches end. Under p.mu.
func (x *Limiter) drop(p *pod) {
	p.dead = true
	x.mu.Lock()
	if x.pods[p.uid] == p {
		delete(x.pods, p.uid)
	}
	x.mu.Unlock()
	x.unwatch(p, "")
}

// podDir returns p's cgroup directory: the one found before while it is
// still there, else found again. Under p.mu.
func (x *Limiter) podDir(p *pod) (string, error) {
	if p.dir != "" {
		if ok, _ := isDir(p.dir); ok {
			return p.dir, nil
		}
		x.unwatch(p, "")
		p.dir = ""
	}
	dir, err := findPod(x.base, p.uid)
	if err != nil {
		return "", err
	}
	p.dir = dir
	return dir, nil
}

// gone is the devices of before that are not in after.
func gone(before, after map[Device]Limits) []Device {
	var out []Device
	for d := range before {
		if _, ok := after[d]; !ok {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, Device.compare)
	return out
}

func sortedDevices(m map[Device]Limits) []Device {
	return slices.SortedFunc(maps.Keys(m), Device.compare)
}

// sync writes set and clears clear in p's cgroup from top, p.dir or a
// directory below it: on cgroup v2 in p.dir's io.max only, on v1 in top
// and every directory below it to podDepth below p.dir, each watched
// first while Run runs. A directory below p.dir that is removed meanwhile
// is passed over; p.dir removed is ErrPodNotFound. Under p.mu.
func (x *Limiter) sync(ctx context.Context, p *pod, top string, set map[Device]Limits, clear []Device) error {
	t, err := openTree(x.base)
	if err != nil {
		return err
	}
	defer t.close()
	if x.v2 {
		err := t.writeV2(p.dir, set, clear)
		if errors.Is(err, fs.ErrNotExist) {
			if ok, _ := isDir(p.dir); !ok {
				p.dir = ""
				return fmt.Errorf("pod %s: %w", p.uid, ErrPodNotFound)
			}
			err = fmt.Errorf("%w (is the io controller enabled for the pod's cgroup?)", err)
		}
		return err
	}
	w := x.watcher()
	podGone := func(path string, err error) error {
		if path == p.dir {
			if ok, _ := isDir(p.dir); !ok {
				x.unwatch(p, "")
				p.dir = ""
				return fmt.Errorf("pod %s: %w", p.uid, ErrPodNotFound)
			}
			return err
		}
		if ok, _ := isDir(path); !ok {
			return fs.SkipDir // a container's cgroup removed meanwhile
		}
		return err
	}
	return filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return podGone(path, err)
			}
			return fmt.Errorf("walk %s: %w", path, err)
		}
		if !d.IsDir() { // files; symlinks are not followed
			return nil
		}
		depth := depthBelow(p.dir, path)
		if depth < 0 {
			return fs.SkipDir
		}
		if w != nil && depth < podDepth {
			if err := x.watch(w, p, path); err != nil {
				return podGone(path, err)
			}
		}
		if err := t.writeV1(path, set, clear); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return podGone(path, err)
			}
			return err
		}
		if depth >= podDepth {
			return fs.SkipDir
		}
		return nil
	})
}

func (x *Limiter) watcher() *fsnotify.Watcher {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.w
}

// watch adds a watch of dir, a directory of p's cgroup, to w. Under p.mu.
func (x *Limiter) watch(w *fsnotify.Watcher, p *pod, dir string) error {
	x.mu.Lock()
	_, done := x.watched[dir]
	x.mu.Unlock()
	if done {
		return nil
	}
	if ok, err := isDir(dir); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("watch %s: not a directory: %w", dir, ErrInvalid)
	}
	if err := w.Add(dir); err != nil {
		if errors.Is(err, fsnotify.ErrClosed) {
			return nil // Run ended
		}
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.w != w { // Run ended meanwhile; its watcher is closed
		return nil
	}
	x.watched[dir] = p
	return nil
}

// unwatch ends the watches of p at and below under, or all of p's when
// under is "". Under p.mu.
func (x *Limiter) unwatch(p *pod, under string) {
	x.mu.Lock()
	w := x.w
	var dirs []string
	for dir, q := range x.watched {
		if q == p && (under == "" || depthBelow(under, dir) >= 0) {
			dirs = append(dirs, dir)
			delete(x.watched, dir)
		}
	}
	x.mu.Unlock()
	if w == nil {
		return
	}
	for _, dir := range dirs {
		_ = w.Remove(dir) // the kernel ends the watch of a removed directory itself
	}
}

// created handles name made in a watched directory: a cgroup made below a
// pod's gets the pod's rules, and is watched.
func (x *Limiter) created(ctx context.Context, name string) {
	x.mu.Lock()
	p := x.watched[filepath.Dir(name)]
	x.mu.Unlock()
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dead || p.dir == "" {
		return
	}
	if d := depthBelow(p.dir, name); d < 1 || d > podDepth {
		return
	}
	if ok, _ := isDir(name); !ok {
		return // a file, a symlink, or removed already
	}
	err := x.sync(ctx, p, name, p.want(), nil)
	if err != nil && !errors.Is(err, ErrPodNotFound) {
		klog.FromContext(ctx).Error(err, "Apply IO limits to a new cgroup", "podUID", p.uid, "cgroup", name)
		return
	}
	klog.FromContext(ctx).V(4).Info("IO limits applied to a new cgroup", "podUID", p.uid, "cgroup", name)
}

// removed handles name removed from (or renamed in) a watched directory,
// or a watched directory itself removed: its watches end; the pod's
// cgroup removed is looked for again at the next Apply.
func (x *Limiter) removed(ctx context.Context, name string) {
	x.mu.Lock()
	p := x.watched[name]
	x.mu.Unlock()
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dead {
		return
	}
	x.unwatch(p, name)
	if name == p.dir {
		p.dir = ""
		klog.FromContext(ctx).V(2).Info("Pod cgroup removed", "podUID", p.uid, "cgroup", name)
	}
}

// resync writes every pod's rules again, watching its cgroups.
func (x *Limiter) resync(ctx context.Context) {
	x.mu.Lock()
	pods := slices.Collect(maps.Values(x.pods))
	x.mu.Unlock()
	for _, p := range pods {
		p.mu.Lock()
		if !p.dead {
			var err error
			if _, err = x.podDir(p); err == nil {
				err = x.sync(ctx, p, p.dir, p.want(), nil)
			}
			if err != nil && !errors.Is(err, ErrPodNotFound) {
				klog.FromContext(ctx).Error(err, "Apply IO limits", "podUID", p.uid)
			}
		}
		p.mu.Unlock()
	}
}
