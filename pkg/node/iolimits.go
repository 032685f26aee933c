package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/iolimit"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// IOLimiter holds the pods a volume is published to to its IO limits
// (pkg/iolimit.Limiter); key is the publish's target path.
type IOLimiter interface {
	Apply(ctx context.Context, key, podUID string, devs []iolimit.Device, l iolimit.Limits) error
	Forget(ctx context.Context, key string) error
	// Clear removes rules for devs that no key holds (an earlier
	// process's).
	Clear(ctx context.Context, podUID string, devs []iolimit.Device) error
}

// PodUIDKey is where the kubelet puts the pod's UID in NodePublishVolume's
// volume context (the CSIDriver's podInfoOnMount).
const PodUIDKey = "csi.storage.k8s.io/pod.uid"

// ErrLimitsUnenforced: this node cannot hold pods to IO limits (its
// cgroups have no block IO controller plinth can write).
var ErrLimitsUnenforced = errors.New("this node cannot enforce IO limits")

// limitsOf is v's IO limits; a negative one (a record edited by hand) is
// ErrInvalid, never taken for no limit.
func limitsOf(v pool.Volume) (iolimit.Limits, error) {
	if v.IOLimits.IsZero() {
		return iolimit.Limits{}, nil
	}
	l := v.IOLimits
	if l.ReadIOPS < 0 || l.WriteIOPS < 0 || l.ReadBytesPerSecond < 0 || l.WriteBytesPerSecond < 0 {
		return iolimit.Limits{}, fmt.Errorf("%w: volume %s's record has a negative IO limit: %+v", pool.ErrInvalid, v.ID, *l)
	}
	return iolimit.Limits{
		ReadIOPS: uint64(l.ReadIOPS), WriteIOPS: uint64(l.WriteIOPS),
		ReadBytesPerSecond: uint64(l.ReadBytesPerSecond), WriteBytesPerSecond: uint64(l.WriteBytesPerSecond),
	}, nil
}

// CanLimit says why IO limits cannot be enforced on this node (nil: they
// can, or the node has no pods to hold to them: standalone).
func (p *Mounts) CanLimit() error { return p.NoLimiter }

// limit holds the pod of a publish of volume v at target to v's IO limits,
// and records the pod in the publish record so that a change of the limits
// (Reapply) and a restart of the node agent (ReapplyAll) reach it again.
// Nothing is done for a publish without a pod (no podInfoOnMount, a CO
// that is not Kubernetes) or, where the volume has no limits, beyond
// dropping the ones an earlier class set.
func (p *Mounts) limit(ctx context.Context, pl pool.Pool, v pool.Volume, target, podUID string) error {
	if p.Limiter == nil || podUID == "" {
		if p.NoLimiter != nil && !v.IOLimits.IsZero() {
			// The pod would run unlimited: it does not run here.
			return fmt.Errorf("%w: volume %s has IO limits: %w", ErrLimitsUnenforced, v.ID, p.NoLimiter)
		}
		return nil
	}
	rec, had, err := p.targets.get(target)
	if err != nil {
		return err
	}
	if had && rec.VolumeID == v.ID && rec.PodUID != "" && rec.PodUID != podUID {
		// The kubelet's target paths name their pod: another pod's
		// publish at this one is no retry, and must not move the limits
		// off the pod that has the volume.
		return fmt.Errorf("%w: volume %s is published at %s for pod %s, not %s", pool.ErrExists, v.ID, target, rec.PodUID, podUID)
	}
	if had && rec.VolumeID == v.ID && rec.PodUID != podUID {
		rec.PodUID = podUID
		if err := p.targets.put(rec); err != nil {
			return err
		}
	}
	return p.applyLimits(ctx, pl, v, target, podUID)
}

func (p *Mounts) applyLimits(ctx context.Context, pl pool.Pool, v pool.Volume, target, podUID string) error {
	l, err := limitsOf(v)
	if err != nil {
		return err
	}
	if l.IsZero() {
		return p.Limiter.Forget(ctx, target)
	}
	devs, err := p.devicesOf(ctx, pl, v.ID)
	if err != nil {
		return fmt.Errorf("IO limits of volume %s: %w", v.ID, err)
	}
	// A read-only block publish binds a read-only device of its own
	// (AttachReadOnly), recorded with it: its pod reads through that one.
	if rec, had, err := p.targets.get(target); err != nil {
		return err
	} else if had && rec.VolumeID == v.ID && rec.Device != "" {
		d, err := iolimit.DeviceOf(rec.Device)
		if err != nil {
			return fmt.Errorf("IO limits of volume %s: %w", v.ID, err)
		}
		devs = append(devs, d)
	}
	if err := p.Limiter.Apply(ctx, target, podUID, devs, l); err != nil {
		return fmt.Errorf("IO limits of volume %s for pod %s: %w", v.ID, podUID, err)
	}
	klog.FromContext(ctx).V(2).Info("IO limits applied", "volumeID", v.ID, "pod", podUID, "devices", devs, "limits", l)
	return nil
}

// devicesOf returns the block devices volume id's IO goes to: its own
// (a loop device, a whole disk) or, for a subvolume, every device of the
// btrfs filesystem that holds it.
func (p *Mounts) devicesOf(ctx context.Context, pl pool.Pool, id string) ([]iolimit.Device, error) {
	att, attached, err := pl.Attached(ctx, id)
	if err != nil {
		return nil, err
	}
	if !attached {
		return nil, fmt.Errorf("%w: volume %s is not attached", ErrNotStaged, id)
	}
	if att.Device != "" {
		d, err := iolimit.DeviceOf(att.Device)
		if err != nil {
			return nil, err
		}
		return []iolimit.Device{d}, nil
	}
	if att.Dir == "" {
		return nil, fmt.Errorf("volume %s has neither a device nor a directory", id)
	}
	m, err := p.host.mountHolding(att.Dir)
	if err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("no mount holds volume %s's directory %s", id, att.Dir)
	}
	return filesystemDevices(p.sysfs(), m)
}

// mountHolding is the mount path lies on (path itself need not be a
// mount point: a subvolume's directory is not): of the mounts at path or
// at a directory above it, the deepest, and of those stacked there the
// top one. nil when there is none.
func (h host) mountHolding(path string) (*mount.Info, error) {
	mounts, err := h.mounts()
	if err != nil {
		return nil, err
	}
	path = filepath.Clean(path)
	deepest := ""
	for _, m := range mounts {
		mp := m.Mountpoint
		if (mp == path || mp == "/" || strings.HasPrefix(path, mp+"/")) && len(mp) > len(deepest) {
			deepest = mp
		}
	}
	var at []mount.Info
	for _, m := range mounts {
		if deepest != "" && m.Mountpoint == deepest {
			at = append(at, m)
		}
	}
	return mount.Top(at), nil
}

// filesystemDevices returns the block devices of the filesystem mounted
// as m: a btrfs filesystem's from /sys/fs/btrfs/<fsid>/devices (it may
// have several, and its mounts show an anonymous device number), any
// other's from m's own number.
func filesystemDevices(sysfs string, m *mount.Info) ([]iolimit.Device, error) {
	if m.FSType != "btrfs" {
		d := iolimit.Device{Major: uint32(m.Major), Minor: uint32(m.Minor)}
		if d.Major == 0 {
			return nil, fmt.Errorf("%s at %s has no block device", m.FSType, m.Mountpoint)
		}
		return []iolimit.Device{d}, nil
	}
	src, err := filepath.EvalSymlinks(m.Source)
	if err != nil {
		return nil, fmt.Errorf("btrfs at %s: its device %s: %w", m.Mountpoint, m.Source, err)
	}
	name := filepath.Base(src)
	fss, err := os.ReadDir(filepath.Join(sysfs, "fs", "btrfs"))
	if err != nil {
		return nil, err
	}
	for _, fs := range fss {
		dir := filepath.Join(sysfs, "fs", "btrfs", fs.Name(), "devices")
		if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
			continue
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		var out []iolimit.Device
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name(), "dev"))
			if err != nil {
				return nil, err
			}
			var d iolimit.Device
			if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &d.Major, &d.Minor); err != nil {
				return nil, fmt.Errorf("device number of %s: %q", e.Name(), b)
			}
			out = append(out, d)
		}
		return out, nil
	}
	return nil, fmt.Errorf("btrfs at %s: no filesystem in %s has device %s", m.Mountpoint, filepath.Join(sysfs, "fs", "btrfs"), name)
}

// Reapply makes what uses volume id now match its record: the IO limits of
// every pod it is published to, and, for a thin filesystem volume that is
// staged, a trim of the mounted filesystem (the loop device punches what
// the filesystem does not use out of the image).
func (p *Mounts) Reapply(ctx context.Context, id string) error {
	release, err := p.lock(id)
	if err != nil {
		return err
	}
	defer release()
	pl, v, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return err
	}
	var errs []error
	if p.Limiter != nil {
		targets, err := p.targets.of(id)
		if err != nil {
			return err
		}
		for _, t := range targets {
			rec, had, err := p.targets.get(t)
			if err != nil || !had || rec.PodUID == "" {
				errs = append(errs, err)
				continue
			}
			err = p.applyLimits(ctx, pl, v, t, rec.PodUID)
			if errors.Is(err, iolimit.ErrInvalid) && !errors.Is(err, pool.ErrInvalid) {
				// A pod UID that names no pod (a CSI client that is not
				// the kubelet published it): nothing to hold to limits,
				// and no reason to refuse the change for the real pods.
				klog.FromContext(ctx).Info("IO limits not applied to a publish whose pod UID is not a pod's", "volumeID", id, "targetPath", t, "podUID", rec.PodUID, "err", err)
				continue
			}
			errs = append(errs, err)
		}
	}
	// Only a file pool's volumes are thin: a btrfs volume's filesystem is
	// the whole pool's, and a disk is all allocated.
	if !v.Thick && v.Mode == pool.ModeFilesystem && pl.Backend() == "file" {
		errs = append(errs, p.trim(ctx, pl, id))
	}
	return errors.Join(errs...)
}

// ReapplyAll holds every pod this node's records say a volume is published
// to to the volume's IO limits again: after a restart of the node agent,
// whose watches for the pods' new containers ended with it. A published
// volume without limits has any rules an earlier process left for it
// cleared: its limits may have been lifted in the record just before
// that process ended, before it reached the pods.
func (p *Mounts) ReapplyAll(ctx context.Context) error {
	if p.Limiter == nil || p.targets.dir == "" {
		return nil
	}
	files, err := filepath.Glob(filepath.Join(p.targets.dir, "*.json"))
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		var r targetRecord
		if err := publishRecords.Read(f, &r); err != nil || r.PodUID == "" {
			continue
		}
		pl, v, err := p.node.PoolOfVolume(ctx, r.VolumeID)
		if err != nil {
			continue
		}
		if v.IOLimits.IsZero() {
			devs, err := p.devicesOf(ctx, pl, v.ID)
			if err == nil {
				err = p.Limiter.Clear(ctx, r.PodUID, devs)
			}
			if err != nil && !errors.Is(err, iolimit.ErrInvalid) {
				errs = append(errs, fmt.Errorf("clear IO limits of volume %s for pod %s: %w", v.ID, r.PodUID, err))
			}
			continue
		}
		errs = append(errs, p.applyLimits(ctx, pl, v, r.Target, r.PodUID))
	}
	return errors.Join(errs...)
}

// fitrim is FITRIM, _IOWR('X', 121, struct fstrim_range).
const fitrim = 0xc0185879

// fstrimRange is struct fstrim_range; the kernel writes back in Length
// how many bytes it trimmed.
type fstrimRange struct{ Start, Length, MinLen uint64 }

// trim gives a thin volume's unused blocks back to its pool: FITRIM on
// its staging mount, once the mount table says that is the volume's own.
// A volume not staged has nothing mounted to trim; it is trimmed at the
// next change.
func (p *Mounts) trim(ctx context.Context, pl pool.Pool, id string) error {
	staged, err := p.staged.stagedAt(id)
	if err != nil || staged == "" {
		return err
	}
	att, attached, err := pl.Attached(ctx, id)
	if err != nil {
		return err
	}
	at, err := p.look(staged)
	if err != nil {
		return err
	}
	own, _, err := p.host.owns(att, attached, at.mount, staged, false)
	if err != nil || !own {
		return err
	}
	fd, err := unix.Open(staged, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", staged, err)
	}
	defer unix.Close(fd)
	r := fstrimRange{Start: 0, Length: ^uint64(0), MinLen: 0}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fitrim, uintptr(unsafe.Pointer(&r))); errno != 0 {
		if errno == unix.EOPNOTSUPP {
			return nil // a filesystem without discard keeps its blocks
		}
		return fmt.Errorf("trim %s: %w", staged, errno)
	}
	klog.FromContext(ctx).Info("Volume trimmed", "volumeID", id, "stagingPath", staged, "bytes", r.Length)
	return nil
}
