// Package btrfs is the pool backend whose volumes are subvolumes of a btrfs
// filesystem, each bounded by a qgroup limit; snapshots and clones are
// native btrfs snapshots.
package btrfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

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
	name  string
	dir   string
	run   mount.Runner
	index *pool.Index
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
	if _, err := p.run.Run(ctx, "btrfs", "quota", "enable", p.dir); err != nil {
		return nil, fmt.Errorf("pool %s: enable quotas: %w", p.name, err)
	}
	idx, err := pool.OpenIndex(p.volDir(), p.snapDir())
	if err != nil {
		return nil, fmt.Errorf("open pool %s: %w", p.name, err)
	}
	p.index = idx
	// Subvolumes left under a temp name by a crash are removed.
	for _, d := range []string{p.volDir(), p.snapDir()} {
		tmps, _ := filepath.Glob(filepath.Join(d, "*.tmp"))
		for _, t := range tmps {
			if err := p.deleteSubvolume(ctx, t); err != nil {
				return nil, err
			}
		}
	}
	p.clearStaleQgroups(ctx)
	idx.LogLoaded(p.name, p.Backend(), p.dir)
	return p, nil
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

type qgroup struct{ referenced, limit int64 }

// qgroups reads every level-0 qgroup of the filesystem, keyed by subvolume id.
func (p *Pool) qgroups(ctx context.Context, path string, only bool) (map[uint64]qgroup, error) {
	args := []string{"qgroup", "show", "--raw", "-re"}
	if only {
		args = append(args, "-f")
	}
	out, err := p.run.Run(ctx, "btrfs", append(args, path)...)
	if err != nil {
		return nil, err
	}
	return parseQgroups(out), nil
}

// parseQgroups parses `btrfs qgroup show --raw -re` output.
func parseQgroups(out []byte) map[uint64]qgroup {
	res := map[uint64]qgroup{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "0/") {
			continue
		}
		id, err := strconv.ParseUint(strings.TrimPrefix(f[0], "0/"), 10, 64)
		if err != nil {
			continue
		}
		ref, _ := strconv.ParseInt(f[1], 10, 64)
		lim, _ := strconv.ParseInt(f[3], 10, 64) // "none" parses as 0
		res[id] = qgroup{referenced: ref, limit: lim}
	}
	return res
}

func (p *Pool) subvolID(ctx context.Context, path string) (uint64, error) {
	out, err := p.run.Run(ctx, "btrfs", "inspect-internal", "rootid", path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
}

func (p *Pool) Stats(ctx context.Context) (pool.Stats, error) {
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
	var groups map[uint64]qgroup
	if len(vols) > 0 {
		var err error
		if groups, err = p.qgroups(context.Background(), p.dir, false); err != nil {
			return pool.Stats{}, err
		}
	}
	for _, v := range vols {
		s.ProvisionedBytes += v.CapacityBytes
		used := int64(0)
		if id, err := strconv.ParseUint(v.Parameters[subvolKey], 10, 64); err == nil && v.State == pool.StateReady {
			used = groups[id].referenced
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
		if _, err := p.run.Run(ctx, "btrfs", "qgroup", "limit", strconv.FormatInt(v.CapacityBytes, 10), tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, final); err != nil {
			return fmt.Errorf("rename subvolume: %w", err)
		}
		return pool.SyncDir(p.volDir())
	}()
	if err == nil {
		var id uint64
		if id, err = p.subvolID(ctx, final); err == nil {
			v.Parameters = withParam(v.Parameters, subvolKey, strconv.FormatUint(id, 10))
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

func withParam(m map[string]string, k, val string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for a, b := range m {
		out[a] = b
	}
	out[k] = val
	return out
}

// deleteSubvolume deletes the subvolume at path (missing is fine) and its
// qgroup where the kernel lets it go at once.
func (p *Pool) deleteSubvolume(ctx context.Context, path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	id, idErr := p.subvolID(ctx, path)
	if _, err := p.run.Run(ctx, "btrfs", "subvolume", "delete", path); err != nil {
		return fmt.Errorf("delete subvolume %s: %w", path, err)
	}
	if idErr == nil {
		// Often EBUSY until the cleaner has run; stale ones go at next start.
		_, _ = p.run.Run(ctx, "btrfs", "qgroup", "destroy", "0/"+strconv.FormatUint(id, 10), p.dir)
	}
	return nil
}

func (p *Pool) clearStaleQgroups(ctx context.Context) {
	out, err := p.run.Run(ctx, "btrfs", "qgroup", "show", "--raw", p.dir)
	if err != nil {
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 4 && strings.HasPrefix(f[0], "0/") && f[len(f)-1] == "<stale>" {
			_, _ = p.run.Run(ctx, "btrfs", "qgroup", "destroy", f[0], p.dir)
		}
	}
}

// DeleteVolume deletes the subvolume, then the record; a volume still
// mounted somewhere is ErrInUse.
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
	if err := p.deleteSubvolume(ctx, path+".tmp"); err != nil {
		return err
	}
	if err := p.deleteSubvolume(ctx, path); err != nil {
		return err
	}
	if err := p.index.DropVolume(id); err != nil {
		return err
	}
	klog.InfoS("Volume deleted", "pool", p.name, "volumeID", id)
	return nil
}

// ExpandVolume raises the qgroup limit.
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
	if _, err := p.run.Run(ctx, "btrfs", "qgroup", "limit", strconv.FormatInt(capacity, 10), p.volPath(id)); err != nil {
		return pool.Volume{}, fmt.Errorf("raise limit of %s: %w", id, err)
	}
	v.CapacityBytes = capacity
	if err := p.index.PutVolume(v); err != nil {
		return pool.Volume{}, err
	}
	return v, nil
}

func (p *Pool) GetVolume(ctx context.Context, id string) (pool.Volume, error) {
	return p.index.Volume(id)
}

func (p *Pool) ListVolumes(ctx context.Context) ([]pool.Volume, error) {
	return p.index.Volumes(), nil
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
			err = pool.SyncDir(p.snapDir())
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

func (p *Pool) GetSnapshot(ctx context.Context, id string) (pool.Snapshot, error) {
	return p.index.Snapshot(id)
}

func (p *Pool) ListSnapshots(ctx context.Context) ([]pool.Snapshot, error) {
	return p.index.Snapshots(), nil
}

// Attach hands out the subvolume's directory to bind mount.
func (p *Pool) Attach(ctx context.Context, id string) (pool.Attachment, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Attachment{}, err
	}
	if v.State != pool.StateReady {
		return pool.Attachment{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotReady)
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

// Usage reads the volume's qgroup: the filesystem's statfs would show the
// whole pool, not the volume's limit.
func (p *Pool) Usage(ctx context.Context, id string) (pool.VolumeUsage, bool, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.VolumeUsage{}, true, err
	}
	sub, err := strconv.ParseUint(v.Parameters[subvolKey], 10, 64)
	if err != nil {
		return pool.VolumeUsage{}, true, fmt.Errorf("volume %s has no subvolume id: %w", id, pool.ErrNotReady)
	}
	groups, err := p.qgroups(ctx, p.volPath(id), true)
	if err != nil {
		return pool.VolumeUsage{}, true, err
	}
	g := groups[sub]
	total := v.CapacityBytes
	if g.limit > 0 {
		total = g.limit
	}
	return pool.VolumeUsage{TotalBytes: total, UsedBytes: g.referenced}, true, nil
}
