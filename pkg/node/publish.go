package node

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/pool"
)

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
func (p *Mounts) Publish(ctx context.Context, id, stagingPath, target string, a Access) error {
	release, err := p.lock(id, target)
	if err != nil {
		return err
	}
	defer release()
	if err := p.held(id); err != nil {
		return err
	}
	if err := p.notStagingPath(id, target); err != nil {
		return err
	}
	pl, v, err := p.lookup(ctx, id, a)
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
		if err := p.host.publishedAlready(id, stagingPath, target, a, at, att, attached); err != nil {
			return err
		}
		return p.limit(ctx, pl, v, target, a.PodUID)
	}
	if err := emptyTarget(target, at, a.Block); err != nil {
		return err
	}
	if a.SingleWriter && attached {
		if err := p.host.notPublishedElsewhere(id, att, stagingPath, target, a.Block); err != nil {
			return err
		}
	}
	source, err := p.publishSource(ctx, pl, id, att, attached, stagingPath, a.Block)
	if err != nil {
		return err
	}
	// The pod is held to the volume's IO limits before its containers
	// start (the kubelet publishes first); a failure fails the publish,
	// which the kubelet retries, so the pod never runs unlimited. The
	// bind is undone then: the kubelet takes the error for final and
	// would never unpublish it if the pod went away.
	return p.bind(ctx, pl, id, source, stagingPath, target, at.fi == nil, a, func() error {
		return p.limit(ctx, pl, v, target, a.PodUID)
	})
}

// publishedAlready answers a publish at a target that holds a mount: the
// volume's own, read-only as asked and (for a filesystem) with the
// per-mount options asked, is published already (the mount group is
// applied again); another mount there, or the volume's published
// otherwise, is ErrExists.
func (h host) publishedAlready(id, stagingPath, target string, a Access, at site, att pool.Attachment, attached bool) error {
	own, roDevice, err := h.owns(att, attached, at.mount, target, a.Block)
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

// emptyTarget refuses a target (with nothing mounted there) that a publish
// would hide or replace: for a block volume anything but an empty file,
// for a filesystem anything but an empty directory. Nothing there is fine.
func emptyTarget(target string, at site, block bool) error {
	if at.fi == nil {
		return nil
	}
	if block && (!at.fi.Mode().IsRegular() || at.fi.Size() > 0) {
		return fmt.Errorf("%w: block target %s is %s: only an empty file or nothing is published over", ErrPathInUse, target, at.describe())
	}
	if !block {
		if !at.fi.IsDir() {
			return fmt.Errorf("%w: target %s is %s, not a directory", ErrPathInUse, target, at.describe())
		}
		if empty, err := emptyDir(target); err != nil {
			return fmt.Errorf("read target %s: %w", target, err)
		} else if !empty {
			return fmt.Errorf("%w: target %s is a non-empty directory: mounting there would hide its contents", ErrPathInUse, target)
		}
	}
	return nil
}

// notPublishedElsewhere refuses (ErrPublishedElsewhere) a publish of a
// single-writer volume the mount table shows published at another target.
func (h host) notPublishedElsewhere(id string, att pool.Attachment, stagingPath, target string, block bool) error {
	others, err := h.publishedAt(att, stagingPath, block)
	if err != nil {
		return err
	}
	for _, o := range others {
		if o != target {
			return fmt.Errorf("%w: single-writer volume %s is already published at %s", ErrPublishedElsewhere, id, o)
		}
	}
	return nil
}

// publishSource is what a publish binds: the volume's device (block; a
// whole disk's checked to be still the volume's), or its staging path,
// which must hold the volume's own staging mount (ErrNotStaged).
func (p *Mounts) publishSource(ctx context.Context, pl pool.Pool, id string, att pool.Attachment, attached bool, stagingPath string, block bool) (string, error) {
	if block {
		if !attached || att.Device == "" {
			return "", fmt.Errorf("%w: block volume %s has no device attached", ErrNotStaged, id)
		}
		// A whole disk is reached by its identity at each step: the disk
		// that has it now must still be the volume's (two disks that
		// traded identities since the stage).
		if dc, ok := pool.As[pool.DeviceChecker](pl); ok {
			if err := dc.CheckDevice(ctx, id); err != nil {
				return "", err
			}
		}
		return att.Device, nil
	}
	sm, err := p.look(stagingPath)
	if err != nil {
		return "", err
	}
	if sm.mount == nil {
		return "", fmt.Errorf("%w: nothing mounted at staging path %s", ErrNotStaged, stagingPath)
	}
	if own, _, err := p.host.owns(att, attached, sm.mount, stagingPath, false); err != nil {
		return "", err
	} else if !own {
		return "", fmt.Errorf("%w: staging path %s is %s, not volume %s's staging mount", ErrNotStaged, stagingPath, sm.describe(), id)
	}
	return stagingPath, nil
}

// bind publishes source at target: it records what it makes (the target,
// when create is set; a read-only device for a read-only block publish),
// binds with the publish's options, applies the mount group and runs then
// (the pod's IO limits). A failure undoes what it did.
func (p *Mounts) bind(ctx context.Context, pl pool.Pool, id, source, stagingPath, target string, create bool, a Access, then func() error) (err error) {
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "targetPath", target)
	var undo undoList
	defer func() {
		if err != nil {
			undo.run()
		}
	}()
	rec, had, err := p.targets.get(target)
	if err != nil {
		return err
	}
	if !had || rec.VolumeID != id {
		rec = targetRecord{VolumeID: id, Target: target}
	}
	rec.PodUID = a.PodUID
	if create {
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
		undo.add(func() {
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
	undo.add(func() { _ = p.targets.drop(target) })
	if create {
		if err := createTarget(target, a.Block); err != nil {
			return err
		}
		undo.add(func() { _ = os.Remove(target) })
	}
	if err := p.mounter.Bind(source, target, publishOptions(a)); err != nil {
		return err
	}
	undo.add(func() {
		if uerr := p.mounter.Unmount(target); uerr != nil {
			logger.Error(uerr, "Undo bind after failed publish")
		}
	})
	if a.MountGroup != "" && !a.Block {
		if err := applyMountGroup(stagingPath, a.MountGroup); err != nil {
			return err
		}
	}
	if err := then(); err != nil {
		return err
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
	if p.Limiter != nil {
		if err := p.Limiter.Forget(ctx, target); err != nil {
			klog.FromContext(ctx).Error(err, "Dropping the IO limits of an unpublished volume", "volumeID", id, "targetPath", target)
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
