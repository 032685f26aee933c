package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// Local is a volume.Node over the pools of this machine. Its lock table is the
// one every path that touches a volume on this node takes (the controller's
// calls, the CSI node service, the reconciler of volume objects), so the
// pools' "callers serialise per ID" contract holds in the whole process.
type Local struct {
	pools []pool.Pool // sorted by name
	locks *volume.Locks
	// inUse, set by Mounts, refuses the delete of a volume this
	// node has staged or published (a whole disk's raw block volume leaves
	// no mount or loop device a pool could see).
	inUse func(id string) error
	// published, set by Mounts, refuses a volume this node has published
	// (a pod has it); a staging mount alone is no consumer.
	published func(id string) error
}

var _ volume.Node = (*Local)(nil)

// NewLocal returns a Local serving pools; names must be unique.
func NewLocal(pools ...pool.Pool) (*Local, error) {
	seen := map[string]bool{}
	for _, p := range pools {
		if seen[p.Name()] {
			return nil, fmt.Errorf("%w: pool %q declared twice", pool.ErrInvalid, p.Name())
		}
		seen[p.Name()] = true
	}
	ps := append([]pool.Pool(nil), pools...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name() < ps[j].Name() })
	return &Local{pools: ps, locks: volume.NewLocks()}, nil
}

func volumeKey(id string) string   { return "volume/" + id }
func snapshotKey(id string) string { return "snapshot/" + id }

// lock takes the locks of keys, all or none: volumeKey and snapshotKey
// of the volume or snapshot at hand and of its source (a clone, a restore,
// a snapshot), and Mounts' path keys (Mounts.lock). It fails at
// once with volume.ErrLocked when another operation holds one.
func (n *Local) lock(keys ...string) (func(), error) {
	return n.locks.TryAcquire(keys...)
}

// Pool returns the pool named name.
func (n *Local) Pool(name string) (pool.Pool, error) {
	for _, p := range n.pools {
		if p.Name() == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("pool %q: %w", name, pool.ErrNotFound)
}

// PoolOfVolume returns the pool that holds volume id.
func (n *Local) PoolOfVolume(ctx context.Context, id string) (pool.Pool, pool.Volume, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return nil, pool.Volume{}, err
	}
	for _, p := range n.pools {
		if v, err := p.GetVolume(ctx, id); err == nil {
			return p, checked(ctx, p, v), nil
		}
	}
	return nil, pool.Volume{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
}

// Unopened names the pools whose records cannot be read (their disks gone
// when plinth started): an ID no other pool knows may be theirs.
func (n *Local) Unopened(ctx context.Context) []string {
	var out []string
	for _, p := range n.pools {
		if _, err := p.GetVolume(ctx, "unopened-probe"); err != nil && !errors.Is(err, pool.ErrNotFound) {
			out = append(out, p.Name())
		}
	}
	return out
}

// gone turns "not found" into "cannot tell" while a pool cannot be read: a
// delete must not take an ID that may live on a missing disk for gone.
func (n *Local) gone(ctx context.Context, kind, id string, err error) error {
	if !errors.Is(err, pool.ErrNotFound) {
		return err
	}
	if u := n.Unopened(ctx); len(u) > 0 {
		return fmt.Errorf("%w: %s %s is in none of the readable pools, and pool %s cannot be read", pool.ErrNotReady, kind, id, strings.Join(u, ", "))
	}
	return err
}

// checked sets v.Problem where the pool says the volume is out of reach.
func checked(ctx context.Context, p pool.Pool, v pool.Volume) pool.Volume {
	if vc, ok := pool.As[pool.VolumeChecker](p); ok {
		if err := vc.CheckVolume(ctx, v.ID); err != nil {
			v.Problem = err.Error()
		}
	}
	return v
}

func (n *Local) poolOfSnapshot(ctx context.Context, id string) (pool.Pool, error) {
	if err := pool.ValidateID("snapshot ID", id); err != nil {
		return nil, err
	}
	for _, p := range n.pools {
		if _, err := p.GetSnapshot(ctx, id); err == nil {
			return p, nil
		}
	}
	return nil, fmt.Errorf("snapshot %s: %w", id, pool.ErrNotFound)
}

// A pool that cannot be read (its disk gone, its filesystem failed) is left
// out, so that new volumes go to the healthy ones; only when no pool can be
// read is that an error.
func (n *Local) Pools(ctx context.Context) ([]volume.PoolInfo, error) {
	out := make([]volume.PoolInfo, 0, len(n.pools))
	var errs []error
	for _, p := range n.pools {
		st, err := p.Stats(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", p.Name(), err))
			continue
		}
		out = append(out, volume.PoolInfo{Name: p.Name(), Backend: p.Backend(), Capabilities: p.Capabilities(), Stats: st})
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func (n *Local) CreateVolume(ctx context.Context, poolName string, v pool.Volume) (pool.Volume, error) {
	keys := []string{volumeKey(v.ID)}
	if v.Source != nil && v.Source.VolumeID != "" && v.Source.VolumeID != v.ID {
		keys = append(keys, volumeKey(v.Source.VolumeID))
	}
	if v.Source != nil && v.Source.SnapshotID != "" {
		keys = append(keys, snapshotKey(v.Source.SnapshotID))
	}
	release, err := n.lock(keys...)
	if err != nil {
		return pool.Volume{}, err
	}
	defer release()
	if v.Source != nil && v.Source.Node != "" {
		return pool.Volume{}, fmt.Errorf("%w: volume %s is filled from node %s: it is made by an import", pool.ErrInvalid, v.ID, v.Source.Node)
	}
	// A volume with this ID elsewhere (an earlier attempt placed it in
	// another pool) is the one to return or to conflict with.
	if p, _, err := n.PoolOfVolume(ctx, v.ID); err == nil && p.Name() != poolName {
		return p.CreateVolume(ctx, v)
	}
	p, err := n.Pool(poolName)
	if err != nil {
		return pool.Volume{}, err
	}
	// A content source must live in the same pool: clones are local copies.
	if v.Source != nil {
		var srcPool pool.Pool
		if v.Source.SnapshotID != "" {
			srcPool, err = n.poolOfSnapshot(ctx, v.Source.SnapshotID)
		} else {
			srcPool, _, err = n.PoolOfVolume(ctx, v.Source.VolumeID)
		}
		if err != nil {
			return pool.Volume{}, err
		}
		if srcPool.Name() != poolName {
			return pool.Volume{}, fmt.Errorf("%w: source is in pool %s, volume asked for pool %s", pool.ErrInvalid, srcPool.Name(), poolName)
		}
	}
	return p.CreateVolume(ctx, v)
}

func (n *Local) DeleteVolume(ctx context.Context, id string) error {
	release, err := n.lock(volumeKey(id))
	if err != nil {
		return err
	}
	defer release()
	p, _, err := n.PoolOfVolume(ctx, id)
	if err != nil {
		return n.gone(ctx, "volume", id, err)
	}
	if n.inUse != nil {
		if err := n.inUse(id); err != nil {
			return fmt.Errorf("delete volume %s: %w", id, err)
		}
	}
	return p.DeleteVolume(ctx, id)
}

func (n *Local) ExpandVolume(ctx context.Context, id string, capacity int64) (pool.Volume, error) {
	release, err := n.lock(volumeKey(id))
	if err != nil {
		return pool.Volume{}, err
	}
	defer release()
	p, _, err := n.PoolOfVolume(ctx, id)
	if err != nil {
		return pool.Volume{}, err
	}
	return p.ExpandVolume(ctx, id, capacity)
}

// ModifyVolume changes volume id's provisioning and IO limits (a pool
// that cannot is ErrInvalid). The caller applies the new IO limits to the
// volume's consumers (Mounts.Reapply).
func (n *Local) ModifyVolume(ctx context.Context, id string, m pool.Mutable) (pool.Volume, error) {
	release, err := n.lock(volumeKey(id))
	if err != nil {
		return pool.Volume{}, err
	}
	defer release()
	p, v, err := n.PoolOfVolume(ctx, id)
	if err != nil {
		return pool.Volume{}, err
	}
	if pool.MutableOf(v).Equal(m) {
		return v, nil
	}
	mod, ok := pool.As[pool.Modifier](p)
	if !ok {
		return pool.Volume{}, fmt.Errorf("%w: pool %s (%s) cannot change its volumes' attributes", pool.ErrInvalid, p.Name(), p.Backend())
	}
	return mod.ModifyVolume(ctx, id, m)
}

func (n *Local) Volume(ctx context.Context, id string) (pool.Volume, error) {
	_, v, err := n.PoolOfVolume(ctx, id)
	return v, err
}

func (n *Local) Snapshot(ctx context.Context, id string) (pool.Snapshot, error) {
	p, err := n.poolOfSnapshot(ctx, id)
	if err != nil {
		return pool.Snapshot{}, err
	}
	return p.GetSnapshot(ctx, id)
}

func (n *Local) Volumes(ctx context.Context) ([]pool.Volume, error) {
	var out []pool.Volume
	for _, p := range n.pools {
		vs, err := p.ListVolumes(ctx)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			out = append(out, checked(ctx, p, v))
		}
	}
	return out, nil
}

func (n *Local) CreateSnapshot(ctx context.Context, s pool.Snapshot) (pool.Snapshot, error) {
	release, err := n.lock(snapshotKey(s.ID), volumeKey(s.SourceVolumeID))
	if err != nil {
		return pool.Snapshot{}, err
	}
	defer release()
	if p, err := n.poolOfSnapshot(ctx, s.ID); err == nil {
		return p.CreateSnapshot(ctx, s)
	}
	p, _, err := n.PoolOfVolume(ctx, s.SourceVolumeID)
	if err != nil {
		return pool.Snapshot{}, err
	}
	return p.CreateSnapshot(ctx, s)
}

func (n *Local) DeleteSnapshot(ctx context.Context, id string) error {
	release, err := n.lock(snapshotKey(id))
	if err != nil {
		return err
	}
	defer release()
	p, err := n.poolOfSnapshot(ctx, id)
	if err != nil {
		return n.gone(ctx, "snapshot", id, err)
	}
	return p.DeleteSnapshot(ctx, id)
}

func (n *Local) Snapshots(ctx context.Context) ([]pool.Snapshot, error) {
	var out []pool.Snapshot
	for _, p := range n.pools {
		ss, err := p.ListSnapshots(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, ss...)
	}
	return out, nil
}

// PoolHealth is one pool's stats, or why they could not be read.
type PoolHealth struct {
	Name         string
	Backend      string
	Capabilities pool.Capabilities
	Stats        pool.Stats
	Err          error
}

// PoolHealth reads every pool; unlike Pools it does not fail as a whole
// when one pool cannot be read.
// VolumeLimit is how many volumes the node's pools can hold in all, when
// that is bounded by a count (disk pools only: one volume per disk
// present); bounded is false when a pool is bounded by bytes alone (file,
// btrfs: the capacity the scheduler reads bounds them).
func (n *Local) VolumeLimit(ctx context.Context) (limit int64, bounded bool) {
	for _, p := range n.pools {
		st, err := p.Stats(ctx)
		switch {
		case err == nil && st.MaxVolumes > 0:
			limit += int64(st.MaxVolumes)
		case p.Backend() == "disk":
			// A disk pool with no disk present, or unreadable, holds nothing now.
		default:
			return 0, false
		}
	}
	return limit, true
}

func (n *Local) PoolHealth(ctx context.Context) []PoolHealth {
	out := make([]PoolHealth, 0, len(n.pools))
	for _, p := range n.pools {
		st, err := p.Stats(ctx)
		out = append(out, PoolHealth{Name: p.Name(), Backend: p.Backend(), Capabilities: p.Capabilities(), Stats: st, Err: err})
	}
	return out
}
