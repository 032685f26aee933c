package btrfs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// A volume's limit is on the level-1 qgroup 1/<its subvolume id>, which
// holds the volume's own 0/<id> and the 0/<n> of every subvolume made
// anywhere below it: a tenant may make subvolumes inside a volume (it needs
// no privilege), and each has a level-0 qgroup of its own that a level-0
// limit on the volume does not see. The design and what remains open are in
// docs/backends.md.

// readySubvol is the subvolume id of a ready volume.
func readySubvol(v pool.Volume) (uint64, bool) {
	if v.State != pool.StateReady {
		return 0, false
	}
	sub, err := strconv.ParseUint(v.Parameters[subvolKey], 10, 64)
	return sub, err == nil
}

// used is what a volume references: its level-1 group's number, or its own
// level-0 one where that is larger (a group made since the last commit
// still reads 0).
func (s *fsState) used(sub uint64) int64 {
	var n int64
	if g := s.groups[level1(sub)]; g != nil {
		n = g.referenced
	}
	if g := s.groups[qgroupID(0, sub)]; g != nil && g.referenced > n {
		n = g.referenced
	}
	return n
}

// subvolID returns the id of the subvolume whose root is at path, without
// following a symlink there.
func subvolID(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open subvolume %s: %w", path, err)
	}
	defer unix.Close(fd)
	id, err := subvolOf(fd)
	if err != nil {
		return 0, fmt.Errorf("subvolume %s: %w", path, err)
	}
	return id, nil
}

// boundVolume bounds volume v by limit (see boundSub).
func (p *Pool) boundVolume(ctx context.Context, v pool.Volume, limit int64) error {
	sub, err := strconv.ParseUint(v.Parameters[subvolKey], 10, 64)
	if err != nil {
		return fmt.Errorf("volume %s has no subvolume id: %w", v.ID, pool.ErrNotReady)
	}
	return p.boundSub(ctx, sub, limit, adopted(v))
}

// adoptedKey records, in a volume received from another node, the
// subvolumes it was received as (comma-separated ids). With simple quotas
// the kernel charges an extent to the subvolume that wrote it for as long
// as the extent lives, also once that subvolume is deleted: the data a
// volume was received with is charged to those, so their level-0 groups
// stay members of the volume's level-1 group, and count against its
// limit.
const adoptedKey = "btrfs.plinth.example.com/adopted-subvolumes"

// adopted are the subvolumes whose groups count for volume v.
func adopted(v pool.Volume) []uint64 {
	var out []uint64
	for _, f := range strings.Split(v.Parameters[adoptedKey], ",") {
		if id, err := strconv.ParseUint(f, 10, 64); err == nil && id >= firstFreeObjectID {
			out = append(out, id)
		}
	}
	return out
}

// withAdopted records ids as adopted by v (with those it has).
func withAdopted(v pool.Volume, ids ...uint64) map[string]string {
	all := adopted(v)
	for _, id := range ids {
		if !slices.Contains(all, id) {
			all = append(all, id)
		}
	}
	parts := make([]string, len(all))
	for i, id := range all {
		parts[i] = strconv.FormatUint(id, 10)
	}
	return pool.WithParameter(v.Parameters, adoptedKey, strings.Join(parts, ","))
}

// boundSub puts subvolume sub and everything below it under sub's level-1
// group limited to limit bytes. It is also how a volume made before level-1
// groups is upgraded: only steps still missing are taken, so it finishes
// whatever a crash interrupted.
func (p *Pool) boundSub(ctx context.Context, sub uint64, limit int64, keep []uint64) error {
	p.quotaMu.Lock()
	defer p.quotaMu.Unlock()
	st, err := readState(p.dir)
	if err != nil {
		return err
	}
	changed, err := p.bound(ctx, st, sub, limit, keep)
	if changed {
		err = errors.Join(err, p.settle(ctx))
	}
	return err
}

// bound makes the membership of sub's level-1 group exactly sub and the
// live subvolumes below it, taking those out of any other group (a tenant
// chooses a new subvolume's groups with an inherit list); with limit > 0 it
// sets the group's limit, then clears a level-0 limit left from before.
// Each step is taken only when st shows it missing. It reports whether it
// changed anything.
func (p *Pool) bound(ctx context.Context, st *fsState, sub uint64, limit int64, keep []uint64) (bool, error) {
	if !st.quotas {
		return false, errors.New("quotas are off on the pool's filesystem")
	}
	if _, ok := st.subvols[sub]; !ok {
		return false, fmt.Errorf("subvolume %d does not exist", sub)
	}
	changed := false
	run := func(args ...string) error {
		changed = true
		_, err := p.run.Run(ctx, "btrfs", args...)
		return err
	}
	g := level1(sub)
	gs := qgroupString(g)
	group := st.groups[g]
	if group == nil {
		if err := run("qgroup", "create", gs, p.dir); err != nil {
			return changed, err
		}
	}
	// A nested subvolume may sit in the volume's group and in the groups the
	// volume itself sits in (an operator's, say); anywhere else a tenant put it.
	allowed := map[uint64]bool{g: true}
	if own := st.groups[qgroupID(0, sub)]; own != nil {
		for _, parent := range own.parents {
			allowed[parent] = true
		}
	}
	nested := st.below(sub)
	want := map[uint64]bool{qgroupID(0, sub): true}
	for _, m := range append([]uint64{sub}, nested...) {
		q := qgroupID(0, m)
		want[q] = true
		member := st.groups[q]
		if member == nil {
			if err := run("qgroup", "create", qgroupString(q), p.dir); err != nil {
				return changed, err
			}
			member = &qgroupInfo{}
		}
		in := false
		for _, parent := range slices.Clone(member.parents) {
			if parent == g {
				in = true
				continue
			}
			if m != sub && !allowed[parent] {
				if err := run("qgroup", "remove", qgroupString(q), qgroupString(parent), p.dir); err != nil {
					return changed, err
				}
				st.unlink(q, parent)
			}
		}
		if !in {
			if err := run("qgroup", "assign", qgroupString(q), gs, p.dir); err != nil {
				return changed, err
			}
			st.link(q, g)
		}
	}
	// The groups of the subvolumes the volume was received as (adopted)
	// stay members while they exist (with simple quotas, as long as they
	// account for an extent).
	for _, k := range keep {
		q := qgroupID(0, k)
		member := st.groups[q]
		if member == nil {
			continue
		}
		want[q] = true
		if !slices.Contains(member.parents, g) {
			if err := run("qgroup", "assign", qgroupString(q), gs, p.dir); err != nil {
				return changed, err
			}
			st.link(q, g)
		}
	}
	if group != nil {
		// A live subvolume outside the volume does not count against it
		// (the group of a reused subvolume id may hold one).
		for _, c := range slices.Clone(group.children) {
			if _, live := st.subvols[c]; c>>48 == 0 && live && !want[c] {
				if err := run("qgroup", "remove", qgroupString(c), gs, p.dir); err != nil {
					return changed, err
				}
				st.unlink(c, g)
			}
		}
	}
	if limit <= 0 {
		return changed, nil
	}
	if group == nil || group.limit != limit {
		if err := run("qgroup", "limit", strconv.FormatInt(limit, 10), gs, p.dir); err != nil {
			return changed, err
		}
	}
	if own := st.groups[qgroupID(0, sub)]; own != nil && own.limit != 0 {
		if err := run("qgroup", "limit", "none", qgroupString(qgroupID(0, sub)), p.dir); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

// settle commits the filesystem's transaction, after which the qgroup tree
// shows the numbers and status that changes left, and with full qgroups
// starts a rescan where they left the accounting inconsistent (moving a
// subvolume that shares extents does): until a rescan ends the kernel
// counts nothing, and no limit holds, anywhere on the filesystem.
func (p *Pool) settle(ctx context.Context) error {
	fd, err := unix.Open(p.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	err = unix.Syncfs(fd)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("sync %s: %w", p.dir, err)
	}
	st, err := readState(p.dir)
	if err != nil {
		return err
	}
	return p.rescanIfInconsistent(ctx, st)
}

func (p *Pool) rescanIfInconsistent(ctx context.Context, st *fsState) error {
	if !st.quotas || st.simple() || !st.inconsistent() || st.rescanning() {
		return nil
	}
	klog.InfoS("Qgroup accounting is inconsistent, no limit holds until a rescan ends: rescanning", "pool", p.name)
	if _, err := p.run.Run(ctx, "btrfs", "quota", "rescan", p.dir); err != nil {
		return fmt.Errorf("start quota rescan: %w", err)
	}
	return nil
}

// sweep brings, for every ready volume, the subvolumes below it under its
// group. With simple quotas the kernel puts a new subvolume in the groups
// of the subvolume it is made in, so this only catches one made with an
// explicit inherit list; with full qgroups it catches every one. Limits are
// left to the calls that hold the volume's lock (a sweep reads records that
// an expansion may be changing). With full qgroups it also starts a rescan
// when the accounting is inconsistent: the kernel then counts nothing, and
// no limit holds, until a rescan ends.
func (p *Pool) sweep(ctx context.Context) error {
	p.quotaMu.Lock()
	defer p.quotaMu.Unlock()
	st, err := readState(p.dir)
	if err != nil {
		return err
	}
	if !st.quotas {
		return errors.New("quotas are off on the pool's filesystem: no volume is bounded")
	}
	var errs []error
	changed := false
	for _, v := range p.index.Volumes() {
		sub, ok := readySubvol(v)
		if !ok {
			continue
		}
		c, err := p.bound(ctx, st, sub, 0, adopted(v))
		changed = changed || c
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.ID, err))
		}
	}
	if changed {
		errs = append(errs, p.settle(ctx))
	} else {
		errs = append(errs, p.rescanIfInconsistent(ctx, st))
	}
	return errors.Join(errs...)
}

// deleteSubvolume deletes the subvolume at path (missing is fine) and every
// subvolume below it, deepest first. What lies below comes from the
// kernel's parent links, each is deleted by its id, and a read-only
// subvolume that holds one is made writable through a path resolved beneath
// the volume without following symlinks: nothing a tenant names or links
// leads the delete elsewhere. Qgroups then go where the kernel lets them go
// at once; the rest at the next start.
func (p *Pool) deleteSubvolume(ctx context.Context, path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open subvolume %s: %w", path, err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	sub, err := subvolOf(fd)
	if err != nil {
		return fmt.Errorf("delete %s: %w", path, err)
	}
	p.quotaMu.Lock()
	defer p.quotaMu.Unlock()
	st, err := readState(p.dir)
	if err != nil {
		return err
	}
	nested := st.below(sub)
	if len(nested) > 0 {
		if err := p.unbound(ctx, st, sub); err != nil {
			return fmt.Errorf("lift the limit of %s: %w", path, err)
		}
		holders := map[uint64]bool{}
		for _, m := range nested {
			holders[st.subvols[m].parent] = true
		}
		for h := range holders {
			if err := st.makeWritable(fd, sub, h); err != nil {
				return fmt.Errorf("make subvolume %d below %s writable: %w", h, path, err)
			}
		}
	}
	unix.Close(fd)
	fd = -1
	// By id, through the pool's directory: nothing is resolved by name.
	pfd, err := unix.Open(p.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	for _, m := range nested {
		if err := destroySubvol(pfd, m); err != nil {
			return fmt.Errorf("delete subvolume %d below %s: %w", m, path, err)
		}
		if st.quotas {
			_, _ = p.run.Run(ctx, "btrfs", "qgroup", "destroy", qgroupString(qgroupID(0, m)), p.dir)
		}
	}
	if err := destroySubvol(pfd, sub); err != nil {
		return fmt.Errorf("delete subvolume %s: %w", path, err)
	}
	id := strconv.FormatUint(sub, 10)
	if !st.quotas {
		return nil
	}
	// Often EBUSY until the cleaner has run; stale ones go at next start.
	_, _ = p.run.Run(ctx, "btrfs", "qgroup", "destroy", "0/"+id, p.dir)
	_, _ = p.run.Run(ctx, "btrfs", "qgroup", "destroy", qgroupString(level1(sub)), p.dir)
	if len(nested) > 0 {
		return p.settle(ctx)
	}
	return nil
}

// unbound lifts the limits on subvolume sub (it is being deleted) and takes
// the subvolumes below it out of other groups: unlinking a subvolume
// reserves space in the groups of the one that holds it, so a volume at its
// limit could not lose its nested subvolumes.
func (p *Pool) unbound(ctx context.Context, st *fsState, sub uint64) error {
	if !st.quotas {
		return nil
	}
	if _, err := p.bound(ctx, st, sub, 0, nil); err != nil {
		return err
	}
	for _, q := range []uint64{level1(sub), qgroupID(0, sub)} {
		if g := st.groups[q]; g == nil || g.limit == 0 {
			continue
		}
		if _, err := p.run.Run(ctx, "btrfs", "qgroup", "limit", "none", qgroupString(q), p.dir); err != nil {
			return err
		}
	}
	return nil
}

// makeWritable clears the read-only flag of subvolume id, which is top
// (open as fd) or lies below it.
func (s *fsState) makeWritable(fd int, top, id uint64) error {
	if id == top {
		return setWritable(fd)
	}
	nfd, err := s.openBelow(fd, top, id)
	if err != nil {
		return err
	}
	defer unix.Close(nfd)
	return setWritable(nfd)
}

// clearStaleQgroups destroys the qgroups of subvolumes that are gone, and
// empty level-1 groups named after them (those of deleted volumes). The
// kernel refuses those that still account for something.
func (p *Pool) clearStaleQgroups(ctx context.Context) {
	p.quotaMu.Lock()
	defer p.quotaMu.Unlock()
	st, err := readState(p.dir)
	if err != nil || !st.quotas {
		return
	}
	for q, g := range st.groups {
		level, id := q>>48, q&(1<<48-1)
		if _, live := st.subvols[id]; live || id < firstFreeObjectID {
			continue
		}
		if level == 0 || level == 1 && len(g.children) == 0 {
			_, _ = p.run.Run(ctx, "btrfs", "qgroup", "destroy", qgroupString(q), p.dir)
		}
	}
}
