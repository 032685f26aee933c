package btrfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

const superMagic = 0x9123683e

// Config of a btrfs pool.
type Config struct {
	Name string
	Dir  string // a directory on a btrfs filesystem
	Run  mount.Runner
}

// Pool is a btrfs pool. Callers serialise calls per volume ID.
type Pool struct {
	// GetVolume, ListVolumes, GetSnapshot, ListSnapshots: from the index.
	pool.VolumeReads
	pool.SnapshotReads
	name  string
	dir   string
	run   mount.Runner
	index *pool.Index
	// quotaMu serialises reading the qgroup tree and changing it on that
	// reading: the periodic sweep (Stats) holds no volume's lock. Each
	// qgroup change commits a transaction of the whole filesystem anyway.
	quotaMu sync.Mutex
}

var _ pool.Pool = (*Pool)(nil)

// New opens the pool in cfg.Dir, enables quotas on its filesystem and
// rebuilds the index from the records on disk.
func New(ctx context.Context, cfg Config) (*Pool, error) {
	if err := pool.ValidateName(cfg.Name); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(cfg.Dir) {
		return nil, fmt.Errorf("%w: pool %s: dir %q is not absolute", pool.ErrInvalid, cfg.Name, cfg.Dir)
	}
	p := &Pool{name: cfg.Name, dir: filepath.Clean(cfg.Dir), run: cfg.Run}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, fmt.Errorf("pool %s: %w", p.name, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(p.dir, &fs); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", p.dir, err)
	}
	if fs.Type != superMagic {
		return nil, fmt.Errorf("%w: pool %s: %s is not on a btrfs filesystem", pool.ErrInvalid, p.name, p.dir)
	}
	if err := p.enableQuotas(ctx); err != nil {
		return nil, fmt.Errorf("pool %s: %w", p.name, err)
	}
	idx, err := pool.OpenIndex(p.volDir(), p.snapDir())
	if err != nil {
		return nil, fmt.Errorf("open pool %s: %w", p.name, err)
	}
	p.index, p.VolumeReads, p.SnapshotReads = idx, idx.VolumeReads(), idx.SnapshotReads()
	// Subvolumes left under a temp name by a crash are removed.
	for _, d := range []string{p.volDir(), p.snapDir()} {
		tmps, _ := filepath.Glob(filepath.Join(d, "*.tmp"))
		for _, t := range tmps {
			if err := p.deleteSubvolume(ctx, t); err != nil {
				return nil, err
			}
		}
	}
	if err := p.dropExports(ctx); err != nil {
		return nil, fmt.Errorf("pool %s: %w", p.name, err)
	}
	// Volumes made before level-1 groups, or left half-bounded by a crash,
	// are bounded now, before anything can be mounted.
	for _, v := range idx.Volumes() {
		if v.State != pool.StateReady {
			continue
		}
		v, err := p.settleSync(ctx, v)
		if err != nil {
			klog.ErrorS(err, "Cannot end what a crash left of a sync", "pool", p.name, "volumeID", v.ID)
		}
		if err := p.boundVolume(ctx, v, v.CapacityBytes); err != nil {
			klog.ErrorS(err, "Cannot bound volume by its level-1 qgroup", "pool", p.name, "volumeID", v.ID)
		}
	}
	p.clearStaleQgroups(ctx)
	idx.LogLoaded(p.name, p.Backend(), p.dir)
	return p, nil
}

// enableQuotas turns quotas on where they are off: simple quotas where the
// kernel has them (Linux 6.7), since only they put a subvolume made inside
// a volume into the volume's group at once; full qgroups otherwise. A
// filesystem whose quotas are on keeps its mode.
func (p *Pool) enableQuotas(ctx context.Context) error {
	st, err := readState(p.dir)
	if err != nil {
		return err
	}
	if st.quotas {
		if !st.simple() {
			klog.InfoS("Pool's filesystem has full qgroups: a volume's tenant can switch qgroup accounting off until a rescan; see docs/backends.md", "pool", p.name, "dir", p.dir)
		}
		return nil
	}
	fd, err := unix.Open(p.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	err = enableSimpleQuotas(fd)
	unix.Close(fd)
	if err == nil {
		klog.InfoS("Simple quotas enabled", "pool", p.name, "dir", p.dir)
		return nil
	}
	klog.InfoS("Simple quotas refused, enabling full qgroups", "pool", p.name, "dir", p.dir, "err", err)
	if _, err := p.run.Run(ctx, "btrfs", "quota", "enable", p.dir); err != nil {
		return fmt.Errorf("enable quotas: %w", err)
	}
	return nil
}

func (p *Pool) volDir() string  { return filepath.Join(p.dir, "volumes") }
func (p *Pool) snapDir() string { return filepath.Join(p.dir, "snapshots") }

// Only IDs that passed pool.ValidateID reach these joins.
func (p *Pool) volPath(id string) string  { return filepath.Join(p.volDir(), id) }
func (p *Pool) snapPath(id string) string { return filepath.Join(p.snapDir(), id) }

func (p *Pool) Name() string    { return p.name }
func (p *Pool) Backend() string { return "btrfs" }
func (p *Pool) Capabilities() pool.Capabilities {
	return pool.Capabilities{FsTypes: []string{"btrfs"}, OwnFs: true}
}

// Stats also sweeps the pool: a subvolume that a tenant made inside a
// volume and kept out of the volume's group (see sweep) is put in it at
// every capacity pass.
func (p *Pool) Stats(ctx context.Context) (pool.Stats, error) {
	if err := p.sweep(ctx); err != nil {
		klog.ErrorS(err, "Cannot bring nested subvolumes under their volumes' limits", "pool", p.name)
	}
	return p.committed(p.index.Volumes(), p.index.Snapshots())
}

// committed: statfs of the filesystem; each volume commits the part of its
// limit it does not reference yet.
func (p *Pool) committed(vols []pool.Volume, snaps []pool.Snapshot) (pool.Stats, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(p.dir, &fs); err != nil {
		return pool.Stats{}, fmt.Errorf("statfs %s: %w", p.dir, err)
	}
	s := pool.Stats{TotalBytes: int64(fs.Blocks) * fs.Bsize, FreeBytes: int64(fs.Bavail) * fs.Bsize, Volumes: len(vols)}
	var st *fsState
	if len(vols) > 0 {
		var err error
		if st, err = readState(p.dir); err != nil {
			return pool.Stats{}, err
		}
	}
	for _, v := range vols {
		s.ProvisionedBytes += v.CapacityBytes
		used := int64(0)
		if sub, ok := readySubvol(v); ok {
			used = st.used(sub)
		}
		if rest := v.CapacityBytes - used; rest > 0 {
			s.CommittedBytes += rest
		}
	}
	return s, nil
}

// subvolKey records a volume's subvolume id in its record.
const subvolKey = "btrfs.plinth.example.com/subvolume-id"

func (p *Pool) CreateVolume(ctx context.Context, v pool.Volume) (pool.Volume, error) {
	if err := pool.ValidateID("volume ID", v.ID); err != nil {
		return pool.Volume{}, err
	}
	if v.Mode != pool.ModeFilesystem {
		return pool.Volume{}, fmt.Errorf("%w: btrfs pool %s serves filesystem volumes only", pool.ErrUnsupported, p.name)
	}
	_, srcSnap, err := p.index.Source(v)
	if err != nil {
		return pool.Volume{}, err
	}
	v, done, err := p.index.BeginVolumeAfterDelete(ctx, p.name, v, p.committed, p.DeleteVolume)
	if err != nil || done {
		return v, err
	}
	final := p.volPath(v.ID)
	err = func() error {
		if _, err := os.Stat(final); err == nil {
			return nil
		}
		tmp := final + ".tmp"
		if err := p.deleteSubvolume(ctx, tmp); err != nil {
			return err
		}
		var err error
		switch {
		case srcSnap != nil:
			_, err = p.run.Run(ctx, "btrfs", "subvolume", "snapshot", p.snapPath(srcSnap.ID), tmp)
		case v.Source != nil:
			_, err = p.run.Run(ctx, "btrfs", "subvolume", "snapshot", p.volPath(v.Source.VolumeID), tmp)
		default:
			_, err = p.run.Run(ctx, "btrfs", "subvolume", "create", tmp)
		}
		if err != nil {
			return err
		}
		if err := os.Rename(tmp, final); err != nil {
			return fmt.Errorf("rename subvolume: %w", err)
		}
		return durable.SyncDir(p.volDir())
	}()
	if err == nil {
		var id uint64
		if id, err = subvolID(final); err == nil {
			// Bounded before the record says ready: nothing mounts it sooner.
			err = p.boundSub(ctx, id, v.CapacityBytes, nil)
			v.Parameters = pool.WithParameter(v.Parameters, subvolKey, strconv.FormatUint(id, 10))
		}
	}
	if err != nil {
		_ = p.deleteSubvolume(ctx, final+".tmp")
		_ = p.deleteSubvolume(ctx, final)
		_ = p.index.DropVolume(v.ID)
		return pool.Volume{}, fmt.Errorf("create subvolume for %s: %w", v.ID, err)
	}
	v.State = pool.StateReady
	if err := p.index.PutVolume(v); err != nil {
		return pool.Volume{}, err
	}
	klog.InfoS("Volume created", "pool", p.name, "volumeID", v.ID, "capacity", v.CapacityBytes)
	return v, nil
}

// DeleteVolume deletes the subvolume with every subvolume made inside it,
// then the record; a volume still mounted somewhere is ErrInUse. A delete
// that stopped part-way (a crash, or the code before nested subvolumes were
// deleted, which left the record in deleting) is finished by a retry.
func (p *Pool) DeleteVolume(ctx context.Context, id string) error {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return err
	}
	path := p.volPath(id)
	mounted, err := mount.IsMountSource(path)
	if err != nil {
		return err
	}
	if mounted {
		return fmt.Errorf("volume %s is mounted: %w", id, pool.ErrInUse)
	}
	if err := p.index.MarkDeleting(id); err != nil {
		return err
	}
	for _, sub := range []string{path + ".tmp", path + ".sync", path} {
		if err := p.deleteSubvolume(ctx, sub); err != nil {
			return err
		}
	}
	if err := p.dropImport(ctx, id); err != nil {
		return err
	}
	if err := p.index.DropVolume(id); err != nil {
		return err
	}
	klog.InfoS("Volume deleted", "pool", p.name, "volumeID", id)
	return nil
}

// ExpandVolume raises the limit of the volume's level-1 qgroup.
func (p *Pool) ExpandVolume(ctx context.Context, id string, capacity int64) (pool.Volume, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Volume{}, err
	}
	if v.State != pool.StateReady {
		return pool.Volume{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotReady)
	}
	if capacity <= v.CapacityBytes {
		return v, nil
	}
	if err := p.index.Fits(p.name, capacity-v.CapacityBytes, p.committed); err != nil {
		return pool.Volume{}, err
	}
	if err := p.boundVolume(ctx, v, capacity); err != nil {
		return pool.Volume{}, fmt.Errorf("raise limit of %s: %w", id, err)
	}
	v.CapacityBytes = capacity
	if err := p.index.PutVolume(v); err != nil {
		return pool.Volume{}, err
	}
	return v, nil
}

// CreateSnapshot takes a read-only btrfs snapshot of the volume.
func (p *Pool) CreateSnapshot(ctx context.Context, s pool.Snapshot) (pool.Snapshot, error) {
	if err := pool.ValidateID("snapshot ID", s.ID); err != nil {
		return pool.Snapshot{}, err
	}
	s, done, err := p.index.BeginSnapshot(p.name, s)
	if err != nil || done {
		return s, err
	}
	final := p.snapPath(s.ID)
	if _, err := os.Stat(final); err != nil {
		tmp := final + ".tmp"
		err := p.deleteSubvolume(ctx, tmp)
		if err == nil {
			_, err = p.run.Run(ctx, "btrfs", "subvolume", "snapshot", "-r", p.volPath(s.SourceVolumeID), tmp)
		}
		if err == nil {
			err = os.Rename(tmp, final)
		}
		if err == nil {
			err = durable.SyncDir(p.snapDir())
		}
		if err != nil {
			_ = p.deleteSubvolume(ctx, tmp)
			_ = p.index.DropSnapshot(s.ID)
			return pool.Snapshot{}, fmt.Errorf("snapshot %s: %w", s.SourceVolumeID, err)
		}
	}
	s.State = pool.StateReady
	if err := p.index.PutSnapshot(s); err != nil {
		return pool.Snapshot{}, err
	}
	klog.InfoS("Snapshot created", "pool", p.name, "snapshotID", s.ID, "sourceVolumeID", s.SourceVolumeID)
	return s, nil
}

func (p *Pool) DeleteSnapshot(ctx context.Context, id string) error {
	if err := pool.ValidateID("snapshot ID", id); err != nil {
		return err
	}
	for _, path := range []string{p.snapPath(id) + ".tmp", p.snapPath(id)} {
		if err := p.deleteSubvolume(ctx, path); err != nil {
			return err
		}
	}
	return p.index.DropSnapshot(id)
}

// Attach hands out the subvolume's directory to bind mount. A volume
// filled from another node is used from now on: the subvolume it was
// received as (kept for a final sync) goes, or it would keep the blocks
// the volume's writes replace outside the volume's limit.
func (p *Pool) Attach(ctx context.Context, id string) (pool.Attachment, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Attachment{}, err
	}
	if v.State != pool.StateReady {
		return pool.Attachment{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotReady)
	}
	if _, err := p.settleSync(ctx, v); err != nil {
		return pool.Attachment{}, fmt.Errorf("volume %s: %w", id, err)
	}
	if err := p.dropImport(ctx, id); err != nil {
		return pool.Attachment{}, fmt.Errorf("volume %s: drop what it was received as: %w", id, err)
	}
	return pool.Attachment{Dir: p.volPath(id)}, nil
}

// Detach has nothing to release for a subvolume.
func (p *Pool) Detach(ctx context.Context, id string) error {
	return pool.ValidateID("volume ID", id)
}

// Attached: a ready subvolume is always reachable, as its directory.
func (p *Pool) Attached(ctx context.Context, id string) (pool.Attachment, bool, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Attachment{}, false, err
	}
	if v.State != pool.StateReady {
		return pool.Attachment{}, false, nil
	}
	return pool.Attachment{Dir: p.volPath(id)}, true, nil
}

// AttachReadOnly: btrfs volumes are filesystems, never block devices.
func (p *Pool) AttachReadOnly(ctx context.Context, id string) (string, error) {
	return "", fmt.Errorf("volume %s: %w: a btrfs pool has no block volumes", id, pool.ErrUnsupported)
}

// ReleaseDevice has nothing to release for a subvolume.
func (p *Pool) ReleaseDevice(ctx context.Context, id, device string) error {
	return pool.ValidateID("volume ID", id)
}

// Usage reads the volume's level-1 qgroup, which holds every subvolume
// inside the volume: the filesystem's statfs would show the whole pool, not
// the volume's limit. It first brings the volume under that group (the
// kubelet asks for every mounted volume's usage about once a minute).
func (p *Pool) Usage(ctx context.Context, id string) (pool.VolumeUsage, bool, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.VolumeUsage{}, true, err
	}
	sub, err := strconv.ParseUint(v.Parameters[subvolKey], 10, 64)
	if err != nil {
		return pool.VolumeUsage{}, true, fmt.Errorf("volume %s has no subvolume id: %w", id, pool.ErrNotReady)
	}
	if v.State == pool.StateReady {
		if err := p.boundSub(ctx, sub, v.CapacityBytes, adopted(v)); err != nil {
			return pool.VolumeUsage{}, true, fmt.Errorf("volume %s: %w", id, err)
		}
	}
	st, err := readState(p.dir)
	if err != nil {
		return pool.VolumeUsage{}, true, err
	}
	total := v.CapacityBytes
	if g := st.groups[level1(sub)]; g != nil && g.limit > 0 {
		total = g.limit
	}
	return pool.VolumeUsage{TotalBytes: total, UsedBytes: st.used(sub)}, true, nil
}
