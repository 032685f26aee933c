package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// ErrNotStaged: a publish came before the volume was staged.
var ErrNotStaged = errors.New("volume is not staged")

// ErrPublishedElsewhere: a single-writer volume is already published.
var ErrPublishedElsewhere = errors.New("volume is published at another target")

// ErrPathInUse: a path holds something that is not the volume's (another
// mount, a non-empty directory, a file of another kind); it is left alone.
var ErrPathInUse = errors.New("path holds something that is not this volume's")

// Mounts does the node's part for a consumer: stage (attach, format if
// empty, mount), publish (bind mount), and their inverses, stats, expand.
// Before it unmounts, grows or declares a path done, it checks from the
// mount table that what is mounted there is this volume's own storage.
type Mounts struct {
	// Hold, when set, says whether a volume may be staged and published
	// now: a volume being moved off the node (its object held) is not, so
	// no new pod writes to it. nil: every volume may.
	Hold func(id string) error
	// Limiter, when set, holds the pods a volume is published to to the
	// volume's IO limits; nil: no limits are enforced.
	Limiter IOLimiter
	// NoLimiter, with Limiter nil, says why this node has none: a volume
	// with IO limits is then published to no pod (it would run
	// unlimited). Both nil: IO limits are not this node's to enforce (no
	// pods: plinth standalone).
	NoLimiter error
	// SysfsRoot is where sysfs is mounted (default /sys): a btrfs
	// filesystem's devices, whose IO a subvolume's limits hold.
	SysfsRoot string

	node    *Local
	mounter mount.Mounter
	host    host // what the ownership checks read
	targets targetRecords
	staged  stagedRecords
}

func (p *Mounts) sysfs() string {
	if p.SysfsRoot == "" {
		return "/sys"
	}
	return p.SysfsRoot
}

// held refuses a volume that Hold says is held.
func (p *Mounts) held(id string) error {
	if p.Hold == nil {
		return nil
	}
	if err := p.Hold(id); err != nil {
		return fmt.Errorf("%w: %w", pool.ErrNotReady, err)
	}
	return nil
}

// NewMounts returns a Mounts for the volumes of node; it records
// what each publish made in stateDir ("" records nothing, and then
// unpublish removes no target).
func NewMounts(node *Local, m mount.Mounter, stateDir string) *Mounts {
	p := &Mounts{node: node, mounter: m, host: realHost()}
	if node != nil {
		node.inUse = p.stagedOrPublished
		node.published = p.publishedAnywhere
	}
	if stateDir != "" {
		p.targets.dir = filepath.Join(stateDir, "targets")
		p.staged.dir = filepath.Join(stateDir, "staged")
		// Stage and publish records describe mounts and loop devices,
		// which no reboot keeps: those of an earlier boot are dropped
		// unread (they are not fsynced, and a crash may have torn them).
		if err := durable.NewBoot(stateDir, func() error {
			for _, dir := range []string{p.targets.dir, p.staged.dir} {
				if err := os.RemoveAll(dir); err != nil {
					return fmt.Errorf("drop records of an earlier boot: %w", err)
				}
			}
			klog.InfoS("Dropped stage and publish records of an earlier boot", "dir", stateDir)
			return nil
		}); err != nil {
			klog.ErrorS(err, "Records of an earlier boot are kept")
		}
	}
	return p
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
	// PodUID is the pod the volume is published to, when the CO says
	// (PodUIDKey): the volume's IO limits are applied to its cgroup.
	PodUID string
}

// lock takes the volume's lock and, for each path the call mounts at or
// unmounts from, the path's: two volumes never work on one path at once.
func (p *Mounts) lock(id string, paths ...string) (func(), error) {
	keys := []string{volumeKey(id)}
	for _, path := range paths {
		keys = append(keys, "path/"+path)
	}
	return p.node.lock(keys...)
}

func (p *Mounts) lookup(ctx context.Context, id string, a Access) (pool.Pool, pool.Volume, error) {
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
	if !a.Block {
		if err := checkOptions(a.MountFlags); err != nil {
			return nil, pool.Volume{}, err
		}
	}
	return pl, v, nil
}

// site is what a path holds now.
type site struct {
	fi    os.FileInfo // from Lstat (a mount point shows the mounted root); nil when absent
	mount *mount.Info // the top mount at the path, nil when none
}

func (p *Mounts) look(path string) (site, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return site{}, nil
	}
	if err != nil {
		return site{}, fmt.Errorf("lstat %s: %w", path, err)
	}
	m, ok, err := p.mounter.MountOf(path)
	if err != nil {
		return site{}, err
	}
	if !ok {
		m = nil
	}
	return site{fi: fi, mount: m}, nil
}

func (s site) describe() string {
	switch {
	case s.fi == nil:
		return "nothing"
	case s.mount != nil:
		return fmt.Sprintf("a %s mount of %s", s.mount.FSType, s.mount.Source)
	case s.fi.IsDir():
		return "a directory"
	case s.fi.Mode().IsRegular():
		return fmt.Sprintf("a file of %d bytes", s.fi.Size())
	}
	return fmt.Sprintf("a %v", s.fi.Mode().Type())
}

func emptyDir(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
}

// stageOptions are the per-mount options a staging mount gets (its
// filesystem options aside): nodev, nosuid, and the consumer's flags.
func stageOptions(flags []string) mount.BindOptions {
	return mount.BindOptions{NoSuid: true, NoDev: true}.WithFlags(flags)
}

// publishOptions are a publish's per-mount options: read-only as asked
// (a flag never undoes it); for a filesystem also nodev, nosuid and the
// consumer's flags; a block device's bind carries no nodev.
func publishOptions(a Access) mount.BindOptions {
	if a.Block {
		return mount.BindOptions{ReadOnly: a.ReadOnly}
	}
	return mount.BindOptions{ReadOnly: a.ReadOnly, NoSuid: true, NoDev: true}.WithFlags(a.MountFlags)
}

// stageFlags are the options of a filesystem's staging mount: the
// consumer's, and always nodev and nosuid (a tenant's device nodes and
// setuid binaries stay inert; the "dev" and "suid" flags are refused).
func stageFlags(flags []string) []string {
	out := append([]string(nil), flags...)
	for _, f := range []string{"nodev", "nosuid"} {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// checkOptions refuses mount flags mount(2) cannot take as asked
// (mount.ParseOptions), before anything is done.
func checkOptions(flags []string) error {
	if _, _, err := mount.ParseOptions(stageFlags(flags)); err != nil {
		return fmt.Errorf("%w: %w", pool.ErrInvalid, err)
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

// undoList is what a stage or publish did so far, undone last first when
// it fails.
type undoList []func()

func (u *undoList) add(f func()) { *u = append(*u, f) }

func (u undoList) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// unmountOwn unmounts every mount of the volume's own stacked at path (from
// repeated failed attempts), releasing a read-only device a block publish
// made; the first mount there that is not the volume's stops it, untouched.
func (p *Mounts) unmountOwn(ctx context.Context, pl pool.Pool, id string, att pool.Attachment, attached bool, kind, path string, block bool) error {
	for i := 0; ; i++ {
		at, err := p.look(path)
		if err != nil {
			return err
		}
		if at.mount == nil {
			return nil
		}
		own, roDevice, err := p.host.owns(att, attached, at.mount, path, block)
		if err != nil {
			return err
		}
		if !own {
			return fmt.Errorf("%w: %s %s is %s, not volume %s: left alone", ErrPathInUse, kind, path, at.describe(), id)
		}
		if i == 8 {
			return fmt.Errorf("unmount %s: still mounted after 8 unmounts", path)
		}
		if err := p.mounter.Unmount(path); err != nil {
			return err
		}
		if roDevice != "" {
			if err := pl.ReleaseDevice(ctx, id, roDevice); err != nil {
				return err
			}
		}
	}
}

// unmountBind unmounts the binds of device node dev stacked at target.
func (p *Mounts) unmountBind(target, dev string) error {
	for i := 0; i < 8; i++ {
		m, ok, err := p.mounter.MountOf(target)
		if err != nil || !ok || !m.BindsDevice(dev) {
			return err
		}
		if err := p.mounter.Unmount(target); err != nil {
			return err
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 8 unmounts", target)
}

// Lookup returns the pool and record of volume id.
func (p *Mounts) Lookup(ctx context.Context, id string) (pool.Pool, pool.Volume, error) {
	return p.node.PoolOfVolume(ctx, id)
}

// PoolHealth reads every pool of the node.
func (p *Mounts) PoolHealth(ctx context.Context) []PoolHealth { return p.node.PoolHealth(ctx) }
