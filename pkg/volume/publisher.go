package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// ErrNotStaged: a publish came before the volume was staged.
var ErrNotStaged = errors.New("volume is not staged")

// ErrPublishedElsewhere: a single-writer volume is already published.
var ErrPublishedElsewhere = errors.New("volume is published at another target")

// Publisher does the node's part for a consumer: stage (attach, format if
// empty, mount), publish (bind mount), and their inverses, stats, expand.
type Publisher struct {
	node    *LocalNode
	mounter mount.Mounter
	locks   *Locks
}

// NewPublisher returns a Publisher for the volumes of node.
func NewPublisher(node *LocalNode, m mount.Mounter) *Publisher {
	return &Publisher{node: node, mounter: m, locks: NewLocks()}
}

// Access describes how a consumer asked for the volume.
type Access struct {
	Block      bool
	FsType     string
	MountFlags []string
	ReadOnly   bool
	// MountGroup is a GID that must be able to write the volume's root.
	MountGroup string
	// SingleWriter: the volume may be published at one target only.
	SingleWriter bool
}

func (p *Publisher) lookup(ctx context.Context, id string, a Access) (pool.Pool, pool.Volume, error) {
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return nil, pool.Volume{}, err
	}
	if a.Block != (v.Mode == pool.ModeBlock) {
		return nil, pool.Volume{}, fmt.Errorf("%w: volume %s is a %s volume", pool.ErrInvalid, id, v.Mode)
	}
	if !a.Block && a.FsType != "" && a.FsType != v.FsType {
		return nil, pool.Volume{}, fmt.Errorf("%w: volume %s holds %s, not %s", pool.ErrInvalid, id, v.FsType, a.FsType)
	}
	return pl, v, nil
}

// Stage makes the volume ready for publishing at stagingPath.
func (p *Publisher) Stage(ctx context.Context, id, stagingPath string, a Access) error {
	release, err := p.locks.TryAcquire(id)
	if err != nil {
		return err
	}
	defer release()
	pl, v, err := p.lookup(ctx, id, a)
	if err != nil {
		return err
	}
	// The CO should have made it; the parent was checked by the caller.
	if err := os.Mkdir(stagingPath, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create staging path %s: %w", stagingPath, err)
	}
	att, err := pl.Attach(ctx, id)
	if err != nil {
		return err
	}
	if a.Block {
		return nil // the device is bound at each target on publish
	}
	if m, ok, err := p.mounter.MountOf(stagingPath); err != nil {
		return err
	} else if ok {
		if att.Device != "" && m.Source != att.Device {
			return fmt.Errorf("%w: %s is already a mount of %s", pool.ErrExists, stagingPath, m.Source)
		}
		return nil
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "stagingPath", stagingPath)
	if att.Device != "" {
		// ext4 that could not grow online (see GrowFs) grows here, offline.
		if err := p.mounter.GrowExt4Offline(ctx, att.Device); err != nil {
			return err
		}
		if err := p.mounter.FormatAndMount(ctx, att.Device, stagingPath, v.FsType, a.MountFlags); err != nil {
			return err
		}
		logger.Info("Volume staged", "device", att.Device, "fsType", v.FsType)
	} else {
		if err := p.mounter.Bind(att.Dir, stagingPath, a.MountFlags); err != nil {
			return err
		}
		logger.Info("Volume staged", "dir", att.Dir)
	}
	if a.MountGroup != "" {
		if err := applyMountGroup(stagingPath, a.MountGroup); err != nil {
			return err
		}
	}
	return nil
}

// applyMountGroup lets group gid write the volume's root: group owner,
// group rwx and setgid so new files inherit the group.
func applyMountGroup(root, group string) error {
	gid, err := strconv.Atoi(group)
	if err != nil || gid < 0 {
		return fmt.Errorf("%w: volume mount group %q is not a numeric GID", pool.ErrInvalid, group)
	}
	if err := os.Lchown(root, -1, gid); err != nil {
		return fmt.Errorf("chown %s to group %d: %w", root, gid, err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return err
	}
	if err := os.Chmod(root, fi.Mode().Perm()|0o070|os.ModeSetgid); err != nil {
		return fmt.Errorf("chmod %s: %w", root, err)
	}
	return nil
}

// Unstage undoes Stage: unmount the staging path, release the device.
func (p *Publisher) Unstage(ctx context.Context, id, stagingPath string) error {
	release, err := p.locks.TryAcquire(id)
	if err != nil {
		return err
	}
	defer release()
	pl, _, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return err
	}
	if err := p.unmountAll(stagingPath); err != nil {
		return err
	}
	if err := pl.Detach(ctx, id); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("Volume unstaged", "volumeID", id, "stagingPath", stagingPath)
	return nil
}

func (p *Publisher) unmountAll(path string) error {
	for i := 0; i < 8; i++ { // stacked mounts from repeated failed attempts
		_, ok, err := p.mounter.MountOf(path)
		if err != nil || !ok {
			return err
		}
		if err := p.mounter.Unmount(path); err != nil {
			return err
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 8 unmounts", path)
}

// Publish binds the staged volume (or the device, for block) at target.
func (p *Publisher) Publish(ctx context.Context, id, stagingPath, target string, a Access) error {
	release, err := p.locks.TryAcquire(id)
	if err != nil {
		return err
	}
	defer release()
	pl, _, err := p.lookup(ctx, id, a)
	if err != nil {
		return err
	}
	if _, ok, err := p.mounter.MountOf(target); err != nil {
		return err
	} else if ok {
		return nil
	}
	if a.SingleWriter {
		others, err := p.targets(ctx, pl, id, stagingPath, a.Block)
		if err != nil {
			return err
		}
		for _, o := range others {
			if o != target {
				return fmt.Errorf("%w: single-writer volume %s is already published at %s", ErrPublishedElsewhere, id, o)
			}
		}
	}
	var opts []string
	if a.ReadOnly {
		opts = append(opts, "ro")
	}
	opts = append(opts, a.MountFlags...)
	source := stagingPath
	if a.Block {
		att, err := pl.Attach(ctx, id)
		if err != nil {
			return err
		}
		source = att.Device
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return fmt.Errorf("create block target %s: %w", target, err)
		}
		f.Close()
	} else {
		if _, ok, err := p.mounter.MountOf(stagingPath); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("%w: nothing mounted at staging path %s", ErrNotStaged, stagingPath)
		}
		if err := os.Mkdir(target, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create target %s: %w", target, err)
		}
	}
	if err := p.mounter.Bind(source, target, opts); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("Volume published", "volumeID", id, "targetPath", target, "readOnly", a.ReadOnly)
	return nil
}

// Unpublish unmounts target and removes what Publish created there.
func (p *Publisher) Unpublish(ctx context.Context, id, target string) error {
	release, err := p.locks.TryAcquire(id)
	if err != nil {
		return err
	}
	defer release()
	if _, _, err := p.node.PoolOfVolume(ctx, id); err != nil {
		return err
	}
	if err := p.unmountAll(target); err != nil {
		return err
	}
	// Remove only what Publish makes: an empty directory or an empty file
	// (a block target). Anything else is not ours to remove.
	if fi, err := os.Lstat(target); err == nil {
		if fi.Mode().IsRegular() && fi.Size() > 0 || !fi.Mode().IsRegular() && !fi.IsDir() {
			return fmt.Errorf("%w: %s is not a target plinth published (a %v of %d bytes)", pool.ErrInvalid, target, fi.Mode().Type(), fi.Size())
		}
		if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove target %s: %w", target, err)
		}
	}
	klog.FromContext(ctx).Info("Volume unpublished", "volumeID", id, "targetPath", target)
	return nil
}

// Stats is what NodeGetVolumeStats reports.
type Stats struct {
	Block                               bool
	TotalBytes, AvailBytes, UsedBytes   int64
	TotalInodes, FreeInodes, UsedInodes int64
	Abnormal                            bool
	Message                             string
}

// Stats reports usage of the volume at path (a target or staging path).
func (p *Publisher) Stats(ctx context.Context, id, path string) (Stats, error) {
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return Stats{}, err
	}
	if _, err := os.Stat(path); err != nil {
		return Stats{}, fmt.Errorf("volume path %s: %w", path, pool.ErrNotFound)
	}
	if _, ok, err := p.mounter.MountOf(path); err != nil {
		return Stats{}, err
	} else if !ok {
		return Stats{}, fmt.Errorf("volume %s is not mounted at %s: %w", id, path, pool.ErrNotFound)
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

// Expand grows the filesystem of the volume at path to its device; it
// returns the capacity the consumer now sees.
func (p *Publisher) Expand(ctx context.Context, id, path string) (int64, error) {
	release, err := p.locks.TryAcquire(id)
	if err != nil {
		return 0, err
	}
	defer release()
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return 0, err
	}
	m, ok, err := p.mounter.MountOf(path)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("volume %s is not mounted at %s: %w", id, path, pool.ErrNotFound)
	}
	if v.Mode == pool.ModeBlock {
		return mount.DeviceSize(path)
	}
	att, err := pl.Attach(ctx, id)
	if err != nil {
		return 0, err
	}
	if att.Device == "" {
		return v.CapacityBytes, nil // the pool's limit was raised; nothing on the node
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "volumePath", path)
	if err := p.mounter.GrowFs(ctx, m.Source, path); errors.Is(err, mount.ErrOnlineResizeRefused) {
		logger.Info("Online filesystem resize refused by the kernel; the filesystem grows at the next stage", "err", err)
	} else if err != nil {
		return 0, err
	}
	logger.Info("Volume expanded on node", "capacity", v.CapacityBytes)
	return v.CapacityBytes, nil
}

// targets lists where the volume is published now, from the mount table:
// mounts of the same filesystem and root as the staging mount, or bind
// mounts of the block device.
func (p *Publisher) targets(ctx context.Context, pl pool.Pool, id, stagingPath string, block bool) ([]string, error) {
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var out []string
	if block {
		att, err := pl.Attach(ctx, id)
		if err != nil {
			return nil, err
		}
		for _, m := range mounts {
			if m.FSType == "devtmpfs" && m.Root == "/"+filepath.Base(att.Device) {
				out = append(out, m.Mountpoint)
			}
		}
		return out, nil
	}
	staged, ok, err := p.mounter.MountOf(stagingPath)
	if err != nil || !ok {
		return nil, err
	}
	for _, m := range mounts {
		if m.Major == staged.Major && m.Minor == staged.Minor && m.Root == staged.Root && m.Mountpoint != stagingPath {
			out = append(out, m.Mountpoint)
		}
	}
	return out, nil
}

// Lookup returns the pool and record of volume id.
func (p *Publisher) Lookup(ctx context.Context, id string) (pool.Pool, pool.Volume, error) {
	return p.node.PoolOfVolume(ctx, id)
}

// PoolHealth reads every pool of the node.
func (p *Publisher) PoolHealth(ctx context.Context) []PoolHealth { return p.node.PoolHealth(ctx) }
