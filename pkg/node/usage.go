package node

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// Stats is what NodeGetVolumeStats reports.
type Stats struct {
	Block                               bool
	TotalBytes, AvailBytes, UsedBytes   int64
	TotalInodes, FreeInodes, UsedInodes int64
	Abnormal                            bool
	Message                             string
}

// Stats reports usage of the volume at path (a target or staging path).
func (p *Mounts) Stats(ctx context.Context, id, path string) (Stats, error) {
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return Stats{}, err
	}
	if err := p.mountedAt(ctx, pl, id, path, v.Mode == pool.ModeBlock); err != nil {
		return Stats{}, err
	}
	if v.Mode == pool.ModeBlock {
		size, err := mount.DeviceSize(path)
		if err != nil {
			return Stats{Block: true, Abnormal: true, Message: err.Error()}, nil
		}
		return Stats{Block: true, TotalBytes: size, Message: "block device readable"}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return Stats{Abnormal: true, Message: fmt.Sprintf("statfs: %v", err)}, nil
	}
	s := Stats{
		TotalBytes: int64(fs.Blocks) * fs.Bsize, AvailBytes: int64(fs.Bavail) * fs.Bsize,
		TotalInodes: int64(fs.Files), FreeInodes: int64(fs.Ffree), Message: "filesystem mounted and readable",
	}
	s.UsedBytes = (int64(fs.Blocks) - int64(fs.Bfree)) * fs.Bsize
	s.UsedInodes = s.TotalInodes - s.FreeInodes
	if u, ok, err := pl.Usage(ctx, id); err != nil {
		return Stats{Abnormal: true, Message: fmt.Sprintf("usage: %v", err)}, nil
	} else if ok {
		s.TotalBytes, s.UsedBytes = u.TotalBytes, u.UsedBytes
		s.AvailBytes = max(0, u.TotalBytes-u.UsedBytes)
		s.AvailBytes = min(s.AvailBytes, int64(fs.Bavail)*fs.Bsize)
	}
	if s.TotalBytes+64<<20 < v.CapacityBytes && v.FsType == "ext4" {
		s.Message = fmt.Sprintf("filesystem grows to %d bytes at the next stage (online resize refused)", v.CapacityBytes)
	}
	return s, nil
}

// mountedAt checks that path is a mount of the volume itself; anything
// else (nothing, another volume, a foreign filesystem) is ErrNotFound.
func (p *Mounts) mountedAt(ctx context.Context, pl pool.Pool, id, path string, block bool) error {
	att, attached, err := pl.Attached(ctx, id)
	if err != nil {
		return err
	}
	at, err := p.look(path)
	if err != nil {
		return err
	}
	if at.fi == nil {
		return fmt.Errorf("volume path %s: %w", path, pool.ErrNotFound)
	}
	own, _, err := p.host.owns(att, attached, at.mount, path, block)
	if err != nil {
		return err
	}
	if !own {
		return fmt.Errorf("volume %s is not mounted at %s (it holds %s): %w", id, path, at.describe(), pool.ErrNotFound)
	}
	return nil
}

// Expand grows the filesystem of the volume at path to its device; it
// returns the capacity the consumer now sees. It acts only when path is a
// mount of the volume's own device, and never attaches anything.
func (p *Mounts) Expand(ctx context.Context, id, path string) (int64, error) {
	release, err := p.lock(id)
	if err != nil {
		return 0, err
	}
	defer release()
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return 0, err
	}
	if err := p.mountedAt(ctx, pl, id, path, v.Mode == pool.ModeBlock); err != nil {
		return 0, err
	}
	if v.Mode == pool.ModeBlock {
		return mount.DeviceSize(path)
	}
	att, _, err := pl.Attached(ctx, id)
	if err != nil {
		return 0, err
	}
	if att.Device == "" {
		return v.CapacityBytes, nil // the pool's limit was raised; nothing on the node
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "volumePath", path)
	if err := p.mounter.GrowFs(ctx, att.Device, path); errors.Is(err, mount.ErrOnlineResizeRefused) {
		logger.Info("Online filesystem resize refused by the kernel; the filesystem grows at the next stage", "err", err)
	} else if err != nil {
		return 0, err
	}
	logger.Info("Volume expanded on node", "capacity", v.CapacityBytes)
	return v.CapacityBytes, nil
}

// VolumeUsage reports the bytes a volume holds, for its PlinthVolume's
// status: the pool's own count where it keeps one (btrfs), else what the
// filesystem at the volume's staging mount says. ok is false where neither
// tells: a raw block volume, a filesystem volume not staged on this node,
// or a staging path that no longer shows the volume's mount.
func (p *Mounts) VolumeUsage(ctx context.Context, id string) (usedBytes int64, ok bool, err error) {
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return 0, false, err
	}
	if u, ok, err := pl.Usage(ctx, id); err != nil || ok {
		return u.UsedBytes, ok, err
	}
	if v.Mode == pool.ModeBlock {
		return 0, false, nil
	}
	at, err := p.staged.stagedAt(id)
	if err != nil || at == "" {
		return 0, false, err
	}
	s, err := p.Stats(ctx, id, at)
	if errors.Is(err, pool.ErrNotFound) || err == nil && s.Abnormal {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return s.UsedBytes, true, nil
}
