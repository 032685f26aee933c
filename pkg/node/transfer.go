package node

import (
	"context"
	"fmt"
	"os"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// Import makes v in poolName from a snapshot on another node (v.Source.Node
// and v.Source.SnapshotID set): the pool records it and says where its
// image goes, fill fills it (the transfer, pkg/transfer), and the pool
// makes it the volume's. Under the volume's lock throughout: a delete
// meanwhile is refused as locked, and cancelling ctx ends fill. What fill
// wrote stays for the next attempt; a delete removes it.
func (n *Local) Import(ctx context.Context, poolName string, v pool.Volume, fill func(context.Context, pool.ImportTarget) error) (pool.Volume, error) {
	if v.Source == nil || v.Source.Node == "" || v.Source.SnapshotID == "" || v.Source.VolumeID != "" {
		return pool.Volume{}, fmt.Errorf("%w: an import names one snapshot on another node", pool.ErrInvalid)
	}
	release, err := n.lock(volumeKey(v.ID))
	if err != nil {
		return pool.Volume{}, err
	}
	defer release()
	if p, _, err := n.PoolOfVolume(ctx, v.ID); err == nil && p.Name() != poolName {
		return pool.Volume{}, fmt.Errorf("volume %s is in pool %s, not %s: %w", v.ID, p.Name(), poolName, pool.ErrExists)
	}
	p, err := n.Pool(poolName)
	if err != nil {
		return pool.Volume{}, err
	}
	imp, ok := pool.As[pool.Importer](p)
	if !ok {
		return pool.Volume{}, fmt.Errorf("%w: pool %s (%s) cannot be filled from another node", pool.ErrUnsupported, poolName, p.Backend())
	}
	// A pool that cannot be read now (its disk gone) takes nothing; the
	// importer may be the pool under the guard that says so.
	if _, err := p.Stats(ctx); err != nil {
		return pool.Volume{}, err
	}
	target, got, err := imp.BeginImport(ctx, v)
	if err != nil {
		return pool.Volume{}, err
	}
	if got.State == pool.StateReady {
		return got, nil
	}
	if err := fill(ctx, target); err != nil {
		return pool.Volume{}, err
	}
	return imp.FinishImport(ctx, v.ID)
}

// ExportSnapshot opens snapshot id's image for a transfer to another node.
// The caller closes it.
func (n *Local) ExportSnapshot(ctx context.Context, id string) (*os.File, pool.Snapshot, error) {
	release, err := n.lock(snapshotKey(id))
	if err != nil {
		return nil, pool.Snapshot{}, err
	}
	defer release()
	p, err := n.poolOfSnapshot(ctx, id)
	if err != nil {
		return nil, pool.Snapshot{}, err
	}
	exp, ok := pool.As[pool.Exporter](p)
	if !ok {
		return nil, pool.Snapshot{}, fmt.Errorf("%w: pool %s (%s) cannot send snapshots to another node", pool.ErrUnsupported, p.Name(), p.Backend())
	}
	return exp.ExportSnapshot(ctx, id)
}

// Sync brings Ready volume id up to date in place from another node (a
// move's final sync): fill writes what differs. Refused while the volume is
// staged or published here (a pod would see its filesystem change under
// it); under the volume's lock throughout.
func (n *Local) Sync(ctx context.Context, id string, fill func(context.Context, pool.ImportTarget) error) error {
	release, err := n.lock(volumeKey(id))
	if err != nil {
		return err
	}
	defer release()
	p, _, err := n.PoolOfVolume(ctx, id)
	if err != nil {
		return err
	}
	if n.inUse != nil {
		if err := n.inUse(id); err != nil {
			return fmt.Errorf("sync volume %s: %w", id, err)
		}
	}
	s, ok := pool.As[pool.Syncer](p)
	if !ok {
		return fmt.Errorf("%w: pool %s (%s) cannot bring volumes up to date from another node", pool.ErrUnsupported, p.Name(), p.Backend())
	}
	// As for an import: a pool that cannot be read now (its disk gone)
	// is written to by nothing; the syncer may be the pool under the guard.
	if _, err := p.Stats(ctx); err != nil {
		return err
	}
	target, err := s.SyncTarget(ctx, id)
	if err != nil {
		return err
	}
	if err := fill(ctx, target); err != nil {
		return err
	}
	return s.FinishSync(ctx, id)
}

// ExportVolume opens volume id's image for a sync to another node; refused
// while the volume is staged or published here. The caller closes it.
func (n *Local) ExportVolume(ctx context.Context, id string) (*os.File, pool.Volume, error) {
	release, err := n.lock(volumeKey(id))
	if err != nil {
		return nil, pool.Volume{}, err
	}
	defer release()
	p, _, err := n.PoolOfVolume(ctx, id)
	if err != nil {
		return nil, pool.Volume{}, err
	}
	if n.inUse != nil {
		if err := n.inUse(id); err != nil {
			return nil, pool.Volume{}, fmt.Errorf("send volume %s: %w", id, err)
		}
	}
	exp, ok := pool.As[pool.Exporter](p)
	if !ok {
		return nil, pool.Volume{}, fmt.Errorf("%w: pool %s (%s) cannot send volumes to another node", pool.ErrUnsupported, p.Name(), p.Backend())
	}
	return exp.ExportVolume(ctx, id)
}

// SendSnapshot makes snapshot id ready to go to another node as a stream
// (a pool that sends streams, pool.Sender). The caller closes the send.
func (n *Local) SendSnapshot(ctx context.Context, id string) (pool.Send, pool.Snapshot, error) {
	release, err := n.lock(snapshotKey(id))
	if err != nil {
		return pool.Send{}, pool.Snapshot{}, err
	}
	defer release()
	p, err := n.poolOfSnapshot(ctx, id)
	if err != nil {
		return pool.Send{}, pool.Snapshot{}, err
	}
	s, ok := pool.As[pool.Sender](p)
	if !ok {
		return pool.Send{}, pool.Snapshot{}, fmt.Errorf("%w: pool %s (%s) cannot send snapshots to another node as a stream", pool.ErrUnsupported, p.Name(), p.Backend())
	}
	return s.SendSnapshot(ctx, id)
}

// SendVolume makes what volume id holds that differs from its snapshot
// base ready to go to another node as a stream (a sync); refused while
// the volume is published here. A volume that is only staged is sent: a
// stream is made from a read-only snapshot the pool takes of the volume,
// and a btrfs snapshot writes the subvolume's dirty data first; the
// staging mount (a bind of the subvolume) serves no pod. The kubelet keeps
// a volume staged while any pod on the node asks for it, and a move's
// held volume is asked for by its workload's new pod on this node (a
// StatefulSet's, placed here by the old claim's node affinity) until the
// claim is bound on the target: a final sync that waited for the unstage
// waited for ever (make move-kills, a btrfs case).
func (n *Local) SendVolume(ctx context.Context, id, base string) (pool.Send, pool.Volume, error) {
	release, err := n.lock(volumeKey(id))
	if err != nil {
		return pool.Send{}, pool.Volume{}, err
	}
	defer release()
	p, _, err := n.PoolOfVolume(ctx, id)
	if err != nil {
		return pool.Send{}, pool.Volume{}, err
	}
	if n.published != nil {
		if err := n.published(id); err != nil {
			return pool.Send{}, pool.Volume{}, fmt.Errorf("send volume %s: %w", id, err)
		}
	}
	s, ok := pool.As[pool.Sender](p)
	if !ok {
		return pool.Send{}, pool.Volume{}, fmt.Errorf("%w: pool %s (%s) cannot send volumes to another node as a stream", pool.ErrUnsupported, p.Name(), p.Backend())
	}
	return s.SendVolume(ctx, id, base)
}
