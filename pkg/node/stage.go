package node

import (
	"context"
	"fmt"
	"os"
	"strings"

	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/pool"
)

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
	if err := p.held(id); err != nil {
		return err
	}
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
		return p.stagedAlready(id, stagingPath, a, at, before, attached)
	}
	// One stage per volume: where it is staged already (and still is) is
	// the answer, not a second stage elsewhere.
	if prev, err := p.stagedElsewhere(id, stagingPath, before, attached, a.Block); err != nil {
		return err
	} else if prev != "" {
		return fmt.Errorf("%w: volume %s is staged at %s already", pool.ErrInUse, id, prev)
	}
	var undo undoList
	defer func() {
		if err != nil {
			undo.run()
		}
	}()
	logger := klog.FromContext(ctx).WithValues("volumeID", id, "stagingPath", stagingPath)
	if err := prepareStagingPath(stagingPath, at, a.Block, &undo); err != nil {
		return err
	}
	att, err := attach(ctx, pl, id, &undo, logger)
	if err != nil {
		return err
	}
	if a.Block {
		logger.V(2).Info("Volume staged", "device", att.Device)
		return p.staged.put(id, stagingPath) // the device is bound at each target on publish
	}
	if err := p.mountStaging(ctx, pl, v, att, stagingPath, a, &undo, logger); err != nil {
		return err
	}
	return p.staged.put(id, stagingPath)
}

// stagedAlready answers a stage at a staging path that holds a mount: the
// volume's own, with the per-mount options asked, is staged already (the
// mount group is applied again); another mount there, or the volume's
// with other options, is ErrExists.
func (p *Mounts) stagedAlready(id, stagingPath string, a Access, at site, att pool.Attachment, attached bool) error {
	own, _, err := p.host.owns(att, attached, at.mount, stagingPath, false)
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

// prepareStagingPath makes the staging path when it is missing (undone on
// failure), and refuses a non-empty directory a filesystem would hide.
func prepareStagingPath(stagingPath string, at site, block bool, undo *undoList) error {
	if at.fi == nil {
		// The CO should have made it; the parent was checked by the caller.
		if err := os.Mkdir(stagingPath, 0o750); err != nil {
			return fmt.Errorf("create staging path %s: %w", stagingPath, err)
		}
		undo.add(func() { _ = os.Remove(stagingPath) })
	} else if !block {
		if empty, err := emptyDir(stagingPath); err != nil {
			return fmt.Errorf("read staging path %s: %w", stagingPath, err)
		} else if !empty {
			return fmt.Errorf("%w: staging path %s is a non-empty directory: mounting there would hide its contents", ErrPathInUse, stagingPath)
		}
	}
	return nil
}

// attach attaches the volume's storage; a device this call bound itself
// (pool.Attachment.Made) is released if the stage fails.
func attach(ctx context.Context, pl pool.Pool, id string, undo *undoList, logger klog.Logger) (pool.Attachment, error) {
	att, err := pl.Attach(ctx, id)
	if err != nil {
		return att, err
	}
	if att.Made && att.Device != "" {
		undo.add(func() {
			if derr := pl.ReleaseDevice(ctx, id, att.Device); derr != nil {
				logger.Error(derr, "Undo attach after failed stage", "device", att.Device)
			}
		})
	}
	return att, nil
}

// mountStaging mounts the volume's filesystem (its device's, formatted if
// need be, or a bind of its directory) at stagingPath and applies the
// mount group; a failure unmounts it, if it is the volume's.
func (p *Mounts) mountStaging(ctx context.Context, pl pool.Pool, v pool.Volume, att pool.Attachment, stagingPath string, a Access, undo *undoList, logger klog.Logger) error {
	undo.add(func() {
		if m, ok, _ := p.mounter.MountOf(stagingPath); ok {
			if own, _, _ := p.host.owns(att, true, m, stagingPath, false); own {
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
		return applyMountGroup(stagingPath, a.MountGroup)
	}
	return nil
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
	br, ok := pool.As[pool.BlankRecorder](pl)
	if !ok || !v.Blank {
		if err := p.mounter.FormatAndMount(ctx, device, path, v.FsType, options); err != nil {
			return err
		}
		// A whole disk's pool records the filesystem now on it as the
		// volume's: a later stage mounts that one only.
		if fr, ok := pool.As[pool.FilesystemRecorder](pl); ok {
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
		others, err := p.host.publishedAt(att, stagingPath, block)
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
	if fa, ok := pool.As[pool.FullAttacher](pl); ok {
		if all, allAttached, err = fa.AttachedAll(ctx, id); err != nil {
			return err
		}
	}
	own := pool.Attachment{}
	if !block && attached {
		own = att // the staging mount is the volume's when it is of att's device
	}
	if err := p.host.notMountedElsewhere(id, all, allAttached, own, stagingPath); err != nil {
		return err
	}
	if !block { // a block volume mounts nothing at its staging path
		if err := p.unmountOwn(ctx, pl, id, att, attached, "staging path", stagingPath, false); err != nil {
			return err
		}
	}
	// Again, now that the staging mount is gone: something may have
	// mounted a device meanwhile.
	if err := p.host.notMountedElsewhere(id, all, allAttached, pool.Attachment{}, ""); err != nil {
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
