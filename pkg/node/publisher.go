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
	"strings"

	"golang.org/x/sys/unix"
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
	node    *Local
	mounter mount.Mounter
	targets targetRecords
	staged  stagedRecords
}

// NewMounts returns a Mounts for the volumes of node; it records
// what each publish made in stateDir ("" records nothing, and then
// unpublish removes no target).
func NewMounts(node *Local, m mount.Mounter, stateDir string) *Mounts {
	p := &Mounts{node: node, mounter: m}
	if node != nil {
		node.inUse = p.stagedOrPublished
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

func rdev(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Rdev, nil
}

// owns reports whether mount m at path is the volume's own: a mount of its
// read-write device (filesystem), a bind of one of its devices (block;
// roDevice names a read-only one), or a bind of its directory.
func owns(att pool.Attachment, attached bool, m *mount.Info, path string, block bool) (own bool, roDevice string, err error) {
	if !attached || m == nil {
		return false, "", nil
	}
	if block {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return false, "", fmt.Errorf("stat %s: %w", path, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return false, "", nil
		}
		for i, dev := range append([]string{att.Device}, att.ReadOnly...) {
			if dev == "" {
				continue
			}
			if r, err := rdev(dev); err == nil && r == st.Rdev {
				if i == 0 {
					return true, "", nil
				}
				return true, dev, nil
			}
		}
		return false, "", nil
	}
	if att.Device != "" {
		if m.Root != "/" {
			return false, "", nil
		}
		if m.Source == att.Device {
			return true, "", nil
		}
		r, err := rdev(att.Device)
		if err != nil {
			return false, "", err
		}
		return uint64(unix.Major(r)) == uint64(m.Major) && uint64(unix.Minor(r)) == uint64(m.Minor), "", nil
	}
	if att.Dir == "" {
		return false, "", nil
	}
	var at, dir unix.Stat_t
	if err := unix.Stat(path, &at); err != nil {
		return false, "", fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Stat(att.Dir, &dir); err != nil {
		return false, "", fmt.Errorf("stat %s: %w", att.Dir, err)
	}
	return at.Dev == dir.Dev && at.Ino == dir.Ino, "", nil
}

func mountReadOnly(m *mount.Info) bool {
	return slices.Contains(strings.Split(m.Options, ","), "ro")
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

// Stage makes the volume ready for publishing at stagingPath. A failure
// undoes what this call did, and only that: a mount it made, a device it
// bound itself (pool.Attachment.Made; a device bound before, by plinth or
// another process, stays), a directory it created.
func (p *Mounts) Stage(ctx context.Context, id, stagingPath string, a Access) (err error) {
	release, err := p.lock(id, stagingPath)
	if err != nil {
		return err
	}
	defer release()
	pl, v, err := p.lookup(ctx, id, a)
	if err != nil {
		return err
	}
	if err := p.insideVolume(stagingPath); err != nil {
		return err
	}
	at, err := p.look(stagingPath)
	if err != nil {
		return err
	}
	if at.fi != nil && !at.fi.IsDir() {
		return fmt.Errorf("%w: staging path %s is %s, not a directory", ErrPathInUse, stagingPath, at.describe())
	}
	before, attached, err := pl.Attached(ctx, id)
	if err != nil {
		return err
	}
	if !a.Block && at.mount != nil {
		own, _, err := owns(before, attached, at.mount, stagingPath, false)
		if err != nil {
			return err
		}
		if !own {
			return fmt.Errorf("%w: staging path %s is %s, not volume %s", pool.ErrExists, stagingPath, at.describe(), id)
		}
		if want := stageOptions(a.MountFlags); !want.Matches(at.mount.Options) {
			return fmt.Errorf("%w: volume %s is staged at %s with %s, asked %s", pool.ErrExists, id, stagingPath, at.mount.Options, want)
		}
		if a.MountGroup != "" {
			if err := applyMountGroup(stagingPath, a.MountGroup); err != nil {
				return err
			}
		}
		return p.staged.put(id, stagingPath) // staged already
	}
	// One stage per volume: where it is staged already (and still is) is
	// the answer, not a second stage elsewhere.
	if prev, err := p.stagedElsewhere(id, stagingPath, before, attached, a.Block); err != nil {
		return err
	} else if prev != "" {
		return fmt.Errorf("%w: volume %s is staged at %s already", pool.ErrInUse, id, prev)
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "stagingPath", stagingPath)
	if at.fi == nil {
		// The CO should have made it; the parent was checked by the caller.
		if err := os.Mkdir(stagingPath, 0o750); err != nil {
			return fmt.Errorf("create staging path %s: %w", stagingPath, err)
		}
		undo = append(undo, func() { _ = os.Remove(stagingPath) })
	} else if !a.Block {
		if empty, err := emptyDir(stagingPath); err != nil {
			return fmt.Errorf("read staging path %s: %w", stagingPath, err)
		} else if !empty {
			return fmt.Errorf("%w: staging path %s is a non-empty directory: mounting there would hide its contents", ErrPathInUse, stagingPath)
		}
	}
	att, err := pl.Attach(ctx, id)
	if err != nil {
		return err
	}
	if att.Made && att.Device != "" {
		undo = append(undo, func() {
			if derr := pl.ReleaseDevice(ctx, id, att.Device); derr != nil {
				logger.Error(derr, "Undo attach after failed stage", "device", att.Device)
			}
		})
	}
	if a.Block {
		logger.V(2).Info("Volume staged", "device", att.Device)
		return p.staged.put(id, stagingPath) // the device is bound at each target on publish
	}
	undo = append(undo, func() {
		if m, ok, _ := p.mounter.MountOf(stagingPath); ok {
			if own, _, _ := owns(att, true, m, stagingPath, false); own {
				if uerr := p.mounter.Unmount(stagingPath); uerr != nil {
					logger.Error(uerr, "Undo mount after failed stage")
				}
			}
		}
	})
	if att.Device != "" {
		if err := p.formatAndMount(ctx, pl, v, att.Device, stagingPath, stageFlags(a.MountFlags)); err != nil {
			return err
		}
		logger.Info("Volume staged", "device", att.Device, "fsType", v.FsType)
	} else {
		if err := p.mounter.Bind(att.Dir, stagingPath, stageOptions(a.MountFlags)); err != nil {
			return err
		}
		logger.Info("Volume staged", "dir", att.Dir)
	}
	if a.MountGroup != "" {
		if err := applyMountGroup(stagingPath, a.MountGroup); err != nil {
			return err
		}
	}
	return p.staged.put(id, stagingPath)
}

// formatAndMount mounts the volume's filesystem on device at path. A
// volume whose record says it is blank is formatted without a probe: the
// record says first, durably, that it is blank no more, then mkfs runs. A
// crash or a failure anywhere after that leaves a record that makes the
// next stage probe (FormatAndMount), and find nothing (mkfs never wrote a
// superblock) or the filesystem. Anything else is probed once: formatted
// when it holds nothing, and ext4 that could not grow online (see GrowFs)
// grows here, offline.
func (p *Mounts) formatAndMount(ctx context.Context, pl pool.Pool, v pool.Volume, device, path string, options []string) error {
	br, ok := pl.(pool.BlankRecorder)
	if !ok || !v.Blank {
		if err := p.mounter.FormatAndMount(ctx, device, path, v.FsType, options); err != nil {
			return err
		}
		// A whole disk's pool records the filesystem now on it as the
		// volume's: a later stage mounts that one only.
		if fr, ok := pl.(pool.FilesystemRecorder); ok {
			return fr.RecordFilesystem(ctx, v.ID, device)
		}
		return nil
	}
	if err := br.MarkFormatted(ctx, v.ID); err != nil {
		return err
	}
	if err := p.mounter.FormatBlank(ctx, device, v.FsType); err != nil {
		return err
	}
	return p.mounter.Mount(device, path, v.FsType, options)
}

// checkOptions refuses mount flags mount(2) cannot take as asked
// (mount.ParseOptions), before anything is done.
func checkOptions(flags []string) error {
	if _, _, err := mount.ParseOptions(stageFlags(flags)); err != nil {
		return fmt.Errorf("%w: %w", pool.ErrInvalid, err)
	}
	return nil
}

// insideVolume refuses a path whose directory lies inside a volume's
// filesystem (a staging mount, or a publish of one, share its device):
// mounting there would make a directory in a tenant's volume and show one
// volume inside another.
func (p *Mounts) insideVolume(path string) error {
	var parent unix.Stat_t
	if err := unix.Stat(filepath.Dir(path), &parent); err != nil {
		return nil // the caller finds out soon enough
	}
	staged, err := p.staged.all()
	if err != nil {
		return err
	}
	for id, at := range staged {
		if _, ok, err := p.mounter.MountOf(at); err != nil || !ok {
			continue // a record from before a reboot: nothing mounted there
		}
		// A staging mount undone since MountOf (another volume's unstage
		// runs meanwhile) shows the directory below it, whose device is its
		// parent's: that is no volume.
		var st, below unix.Stat_t
		if err := unix.Stat(at, &st); err != nil || st.Dev != parent.Dev {
			continue
		}
		if err := unix.Stat(filepath.Dir(at), &below); err == nil && below.Dev == st.Dev {
			continue
		}
		return fmt.Errorf("%w: %s lies inside volume %s (staged at %s)", pool.ErrInvalid, path, id, at)
	}
	return nil
}

// stagedElsewhere returns the path the volume is staged at, when that is
// recorded, is not path, and still holds the volume (its device attached
// for block, its own mount there for a filesystem); "" otherwise.
func (p *Mounts) stagedElsewhere(id, path string, att pool.Attachment, attached, block bool) (string, error) {
	prev, err := p.staged.stagedAt(id)
	if err != nil || prev == "" || prev == path || !attached {
		return "", err
	}
	if block {
		if att.Device != "" {
			return prev, nil
		}
		return "", nil
	}
	pm, ok, err := p.mounter.MountOf(prev)
	if err != nil || !ok {
		return "", err
	}
	own, _, err := owns(att, attached, pm, prev, false)
	if err != nil || !own {
		return "", err
	}
	return prev, nil
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

// Unstage undoes Stage: unmount the staging path (only the volume's own
// mounts there), release the device. A volume still published elsewhere,
// a device of it mounted anywhere but by the staging mount itself, or a
// staging path that holds another mount, is refused untouched.
func (p *Mounts) Unstage(ctx context.Context, id, stagingPath string) error {
	release, err := p.lock(id, stagingPath)
	if err != nil {
		return err
	}
	defer release()
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return err
	}
	att, attached, err := pl.Attached(ctx, id)
	if err != nil {
		return err
	}
	block := v.Mode == pool.ModeBlock
	// Not staged at this path (it is staged elsewhere): OK, nothing done.
	if prev, err := p.stagedElsewhere(id, stagingPath, att, attached, block); err != nil {
		return err
	} else if prev != "" {
		klog.FromContext(ctx).Info("Volume not staged at this path; left staged where it is", "volumeID", id, "stagingPath", stagingPath, "stagedAt", prev)
		return nil
	}
	if attached {
		others, err := p.publishedAt(pl, id, att, stagingPath, block)
		if err != nil {
			return err
		}
		if len(others) > 0 {
			return fmt.Errorf("%w: volume %s is still published at %s: unpublish it first", pool.ErrInUse, id, strings.Join(others, ", "))
		}
	}
	// Detaching a device still mounted anywhere would only mark it to go
	// at its last close: refuse instead, whatever path the caller named,
	// and before the staging mount is touched (a bind of a directory in
	// it, or a mount through another device of the image, keeps the
	// volume in use). Every device of the volume counts here, one bound by
	// something else too, since Detach releases them all.
	all, allAttached := att, attached
	if fa, ok := pl.(pool.FullAttacher); ok {
		if all, allAttached, err = fa.AttachedAll(ctx, id); err != nil {
			return err
		}
	}
	own := pool.Attachment{}
	if !block && attached {
		own = att // the staging mount is the volume's when it is of att's device
	}
	if err := notMountedElsewhere(id, all, allAttached, own, stagingPath); err != nil {
		return err
	}
	if !block { // a block volume mounts nothing at its staging path
		if err := p.unmountOwn(ctx, pl, id, att, attached, "staging path", stagingPath, false); err != nil {
			return err
		}
	}
	// Again, now that the staging mount is gone: something may have
	// mounted a device meanwhile.
	if err := notMountedElsewhere(id, all, allAttached, pool.Attachment{}, ""); err != nil {
		return err
	}
	if err := pl.Detach(ctx, id); err != nil {
		return err
	}
	if err := p.staged.drop(id); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("Volume unstaged", "volumeID", id, "stagingPath", stagingPath)
	return nil
}

// notMountedElsewhere refuses (ErrInUse) while a device of all is mounted
// anywhere, but for the filesystem staging mounts at stagingPath that are
// own's (none when own has no device).
func notMountedElsewhere(id string, all pool.Attachment, attached bool, own pool.Attachment, stagingPath string) error {
	if !attached {
		return nil
	}
	mounts, err := deviceMounts(all)
	if err != nil {
		return err
	}
	var in []string
	for _, m := range mounts {
		if own.Device != "" && m.Mountpoint == stagingPath {
			if ours, _, err := owns(own, true, &m, stagingPath, false); err != nil {
				return err
			} else if ours {
				continue
			}
		}
		if !slices.Contains(in, m.Mountpoint) {
			in = append(in, m.Mountpoint)
		}
	}
	if len(in) > 0 {
		return fmt.Errorf("%w: volume %s is still mounted at %s", pool.ErrInUse, id, strings.Join(in, ", "))
	}
	return nil
}

// notStagingPath refuses a target that is where the volume is staged: the
// staging mount is the volume's own, but it is no publish.
func (p *Mounts) notStagingPath(id, target string) error {
	at, err := p.staged.stagedAt(id)
	if err != nil {
		return err
	}
	if at != "" && at == target {
		return fmt.Errorf("%w: %s is volume %s's staging path, not a publish target", ErrPathInUse, target, id)
	}
	return nil
}

// Publish binds the staged volume (or its device, for block) at target.
func (p *Mounts) Publish(ctx context.Context, id, stagingPath, target string, a Access) (err error) {
	release, err := p.lock(id, target)
	if err != nil {
		return err
	}
	defer release()
	if err := p.notStagingPath(id, target); err != nil {
		return err
	}
	pl, _, err := p.lookup(ctx, id, a)
	if err != nil {
		return err
	}
	if err := p.insideVolume(target); err != nil {
		return err
	}
	att, attached, err := pl.Attached(ctx, id)
	if err != nil {
		return err
	}
	at, err := p.look(target)
	if err != nil {
		return err
	}
	if at.mount != nil {
		own, roDevice, err := owns(att, attached, at.mount, target, a.Block)
		if err != nil {
			return err
		}
		if !own {
			return fmt.Errorf("%w: target %s is %s, not volume %s", pool.ErrExists, target, at.describe(), id)
		}
		readOnly := mountReadOnly(at.mount)
		if a.Block {
			readOnly = roDevice != ""
		}
		if readOnly != a.ReadOnly {
			return fmt.Errorf("%w: volume %s is published at %s with read-only=%t, asked read-only=%t", pool.ErrExists, id, target, readOnly, a.ReadOnly)
		}
		if want := publishOptions(a); !a.Block && !want.Matches(at.mount.Options) {
			return fmt.Errorf("%w: volume %s is published at %s with %s, asked %s", pool.ErrExists, id, target, at.mount.Options, want)
		}
		if a.MountGroup != "" && !a.Block {
			return applyMountGroup(stagingPath, a.MountGroup)
		}
		return nil // published already
	}
	if at.fi != nil {
		if a.Block && (!at.fi.Mode().IsRegular() || at.fi.Size() > 0) {
			return fmt.Errorf("%w: block target %s is %s: only an empty file or nothing is published over", ErrPathInUse, target, at.describe())
		}
		if !a.Block {
			if !at.fi.IsDir() {
				return fmt.Errorf("%w: target %s is %s, not a directory", ErrPathInUse, target, at.describe())
			}
			if empty, err := emptyDir(target); err != nil {
				return fmt.Errorf("read target %s: %w", target, err)
			} else if !empty {
				return fmt.Errorf("%w: target %s is a non-empty directory: mounting there would hide its contents", ErrPathInUse, target)
			}
		}
	}
	if a.SingleWriter && attached {
		others, err := p.publishedAt(pl, id, att, stagingPath, a.Block)
		if err != nil {
			return err
		}
		for _, o := range others {
			if o != target {
				return fmt.Errorf("%w: single-writer volume %s is already published at %s", ErrPublishedElsewhere, id, o)
			}
		}
	}
	source := stagingPath
	if a.Block {
		if !attached || att.Device == "" {
			return fmt.Errorf("%w: block volume %s has no device attached", ErrNotStaged, id)
		}
		// A whole disk is reached by its identity at each step: the disk
		// that has it now must still be the volume's (two disks that
		// traded identities since the stage).
		if dc, ok := pl.(pool.DeviceChecker); ok {
			if err := dc.CheckDevice(ctx, id); err != nil {
				return err
			}
		}
		source = att.Device
	} else {
		sm, err := p.look(stagingPath)
		if err != nil {
			return err
		}
		if sm.mount == nil {
			return fmt.Errorf("%w: nothing mounted at staging path %s", ErrNotStaged, stagingPath)
		}
		if own, _, err := owns(att, attached, sm.mount, stagingPath, false); err != nil {
			return err
		} else if !own {
			return fmt.Errorf("%w: staging path %s is %s, not volume %s's staging mount", ErrNotStaged, stagingPath, sm.describe(), id)
		}
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "targetPath", target)
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	rec, had, err := p.targets.get(target)
	if err != nil {
		return err
	}
	if !had || rec.VolumeID != id {
		rec = targetRecord{VolumeID: id, Target: target}
	}
	if at.fi == nil {
		rec.Created = "dir"
		if a.Block {
			rec.Created = "file"
		}
	}
	if a.Block && a.ReadOnly {
		dev, err := pl.AttachReadOnly(ctx, id)
		if err != nil {
			return err
		}
		undo = append(undo, func() {
			if rerr := pl.ReleaseDevice(ctx, id, dev); rerr != nil {
				logger.Error(rerr, "Undo read-only device after failed publish", "device", dev)
			}
		})
		source, rec.Device = dev, dev
	}
	if a.Block {
		rec.Bound = source
	}
	if err := p.targets.put(rec); err != nil {
		return err
	}
	undo = append(undo, func() { _ = p.targets.drop(target) })
	if at.fi == nil {
		if err := createTarget(target, a.Block); err != nil {
			return err
		}
		undo = append(undo, func() { _ = os.Remove(target) })
	}
	if err := p.mounter.Bind(source, target, publishOptions(a)); err != nil {
		return err
	}
	undo = append(undo, func() {
		if uerr := p.mounter.Unmount(target); uerr != nil {
			logger.Error(uerr, "Undo bind after failed publish")
		}
	})
	if a.MountGroup != "" && !a.Block {
		if err := applyMountGroup(stagingPath, a.MountGroup); err != nil {
			return err
		}
	}
	logger.Info("Volume published", "readOnly", a.ReadOnly)
	return nil
}

// createTarget makes a block target (an empty file) or a filesystem target
// (a directory); it never opens anything that was there (no FIFO, no
// symlink can make it block or write elsewhere).
func createTarget(target string, block bool) error {
	if !block {
		if err := os.Mkdir(target, 0o750); err != nil {
			return fmt.Errorf("create target %s: %w", target, err)
		}
		return nil
	}
	fd, err := unix.Open(target, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create block target %s: %w", target, err)
	}
	return unix.Close(fd)
}

// Unpublish unmounts the volume's own mounts at target and removes what
// Publish made there; another mount at target is refused untouched, and a
// file or directory publish did not make is left where it is. A volume
// this node does not know is unpublishGone's; underAllowedRoot says that
// target lies strictly below a root the CO may use (csi.Paths.Allowed).
func (p *Mounts) Unpublish(ctx context.Context, id, target string, underAllowedRoot bool) error {
	release, err := p.lock(id, target)
	if err != nil {
		return err
	}
	defer release()
	if err := p.notStagingPath(id, target); err != nil {
		return err
	}
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if errors.Is(err, pool.ErrNotFound) {
		return p.unpublishGone(ctx, id, target, underAllowedRoot)
	}
	if err != nil {
		return err
	}
	att, attached, err := pl.Attached(ctx, id)
	if err != nil {
		return err
	}
	block := v.Mode == pool.ModeBlock
	rec, had, err := p.targets.get(target)
	if err != nil {
		return err
	}
	if had && rec.VolumeID == id && rec.Bound != "" {
		// The volume's own block publish, even if its device was freed
		// under it (a consumer can LOOP_CLR_FD its own device): the bind
		// of that device node at this target is plinth's to undo.
		if err := p.unmountBind(target, rec.Bound); err != nil {
			return err
		}
	}
	if err := p.unmountOwn(ctx, pl, id, att, attached, "target", target, block); err != nil {
		return err
	}
	if had && rec.VolumeID == id {
		if rec.Device != "" {
			if err := pl.ReleaseDevice(ctx, id, rec.Device); err != nil {
				return err
			}
		}
		if err := removeCreated(target, rec.Created); err != nil {
			return err
		}
		if err := p.targets.drop(target); err != nil {
			return err
		}
	}
	klog.FromContext(ctx).Info("Volume unpublished", "volumeID", id, "targetPath", target)
	return nil
}

// unpublishGone unpublishes volume id, which this node does not know
// (deleted, or never here), from target.
//
// The kubelet asks for this after a restart, for every volume directory a
// pod directory still holds, deleted volumes included, and retries any
// error for ever (csi_mounter.go TearDownAt treats NOT_FOUND like any other
// failure), so the spec's NOT_FOUND is no answer here. The spec's own rule
// for an unpublish that finds nothing to undo is OK, and so it is: when
// nothing is mounted at target, the volume is published there by no one.
// An empty directory there (the kubelet made it for the publish) is removed
// when it lies below an allowed root: it holds nothing, and the spec says
// the plugin removes the target. Anything else there is left as it is, and
// the answer is still OK: a directory with something in it, a file or a
// FIFO is no publish of a volume that does not exist, and it is the
// kubelet's to clean (removeMountDir removes a file and fails on a
// non-empty directory: nothing is lost either way). A symlink at target
// never gets here (csi.Paths refuses it). A mount at target cannot be told
// to be this volume's, there being no volume to compare it with: refused
// and left alone, as a foreign mount at the target of a known volume is.
func (p *Mounts) unpublishGone(ctx context.Context, id, target string, underAllowedRoot bool) error {
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "targetPath", target)
	at, err := p.look(target)
	if err != nil {
		return err
	}
	if at.mount != nil {
		return fmt.Errorf("%w: target %s is %s, and volume %s is not on this node: left alone", ErrPathInUse, target, at.describe(), id)
	}
	if underAllowedRoot && at.fi != nil && at.fi.IsDir() {
		// rmdir(2): only an empty directory, never through a symlink
		// (ENOTDIR), never a mount point (EBUSY).
		switch err := unix.Rmdir(target); {
		case err == nil:
			logger.Info("Removed the empty target of a volume not on this node")
		case errors.Is(err, unix.EBUSY):
			return fmt.Errorf("%w: target %s was mounted meanwhile: left alone", ErrPathInUse, target)
		case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
			// Not empty (or gone, or replaced): left as it is.
		default:
			return fmt.Errorf("remove target %s: %w", target, err)
		}
	}
	// A record of this volume's publish here is dropped (the publish is
	// undone: nothing is mounted), unless it names a read-only device
	// made for it, which only the volume's pool could release.
	if rec, had, err := p.targets.get(target); err != nil {
		return err
	} else if had && rec.VolumeID == id && rec.Device == "" {
		if err := p.targets.drop(target); err != nil {
			return err
		}
	}
	logger.Info("Volume not on this node; nothing mounted at the target", "found", at.describe())
	return nil
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
		own, roDevice, err := owns(att, attached, at.mount, path, block)
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
		if err != nil || !ok || m.FSType != "devtmpfs" || m.Root != "/"+filepath.Base(dev) {
			return err
		}
		if err := p.mounter.Unmount(target); err != nil {
			return err
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 8 unmounts", target)
}

// removeCreated removes target if publish made it ("dir" or "file") and it
// is still what publish made: an empty directory or an empty file.
func removeCreated(target, created string) error {
	fi, err := os.Lstat(target)
	if errors.Is(err, os.ErrNotExist) || created == "" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lstat %s: %w", target, err)
	}
	switch {
	case created == "dir" && fi.IsDir():
		if empty, err := emptyDir(target); err != nil || !empty {
			return err // something was put there since: keep it
		}
	case created == "file" && fi.Mode().IsRegular() && fi.Size() == 0:
	default:
		return nil
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove target %s: %w", target, err)
	}
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
	own, _, err := owns(att, attached, at.mount, path, block)
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

// deviceMounts lists every mount of the volume's devices: filesystems on
// them and binds of their device nodes.
func deviceMounts(att pool.Attachment) ([]mount.Info, error) {
	devs := append([]string{att.Device}, att.ReadOnly...)
	type majmin struct{ major, minor int }
	nums := map[majmin]bool{}
	for _, d := range devs {
		if d == "" {
			continue
		}
		if r, err := rdev(d); err == nil {
			nums[majmin{int(unix.Major(r)), int(unix.Minor(r))}] = true
		}
	}
	if len(nums) == 0 {
		return nil, nil
	}
	mounts, err := mount.Mounts()
	if err != nil {
		return nil, err
	}
	var out []mount.Info
	for _, m := range mounts {
		of := nums[majmin{m.Major, m.Minor}]
		for _, d := range devs {
			of = of || d != "" && (m.Source == d || m.FSType == "devtmpfs" && m.Root == "/"+filepath.Base(d))
		}
		if of {
			out = append(out, m)
		}
	}
	return out, nil
}

// publishedAt lists where the volume is published now, from the mount
// table: mounts of the same filesystem and root as the staging mount, or
// binds of the volume's devices.
func (p *Mounts) publishedAt(pl pool.Pool, id string, att pool.Attachment, stagingPath string, block bool) ([]string, error) {
	mounts, err := mount.Mounts()
	if err != nil {
		return nil, err
	}
	var out []string
	if block {
		for _, m := range mounts {
			for _, dev := range append([]string{att.Device}, att.ReadOnly...) {
				if dev != "" && m.FSType == "devtmpfs" && m.Root == "/"+filepath.Base(dev) {
					out = append(out, m.Mountpoint)
				}
			}
		}
		return out, nil
	}
	staged, ok, err := p.mounter.MountOf(stagingPath)
	if err != nil || !ok {
		return nil, err
	}
	if own, _, err := owns(att, true, staged, stagingPath, false); err != nil || !own {
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
func (p *Mounts) Lookup(ctx context.Context, id string) (pool.Pool, pool.Volume, error) {
	return p.node.PoolOfVolume(ctx, id)
}

// PoolHealth reads every pool of the node.
func (p *Mounts) PoolHealth(ctx context.Context) []PoolHealth { return p.node.PoolHealth(ctx) }
