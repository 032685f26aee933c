package whole

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// A whole disk moves to another node offline: it has no snapshot to copy
// while its consumer runs, so the move makes a blank disk volume on the
// target first, stops the workload, and then the target's disk is filled
// with the whole held source disk (its chunks of zeros left out) as the
// move's final sync. The source disk is read through one exclusive
// descriptor (nothing mounts it meanwhile); the target disk is zeroed and
// written through one too, and only while the volume's record says the
// disk is being filled (fillingKey): a disk handed to a consumer is never
// overwritten from another node.

var (
	_ pool.Exporter = (*Pool)(nil)
	_ pool.Syncer   = (*Pool)(nil)
)

// fillingKey marks a volume whose disk is being filled from another node:
// what is on the disk then is the transfer's (once a transfer began: its
// progress record exists), a delete wipes it, and no consumer gets it.
const fillingKey = "disk.plinth.example.com/filling"

// fillingAgain is fillingKey's value for a sync run again over a disk an
// earlier run of it filled: what is on the disk is that run's.
const fillingAgain = "again"

// filledKey marks a volume whose disk was filled from another node and
// not yet handed to a consumer: the same sync may run again (a crash
// after FinishSync, before the volume object said so).
const filledKey = "disk.plinth.example.com/filled"

func (p *Pool) importsDir() string          { return filepath.Join(p.cfg.Dir, "imports") }
func (p *Pool) progressOf(id string) string { return filepath.Join(p.importsDir(), id+".json") }

// fillBegan reports whether a transfer began writing volume id's disk
// (its progress record exists: it is written once the disk is zeroed).
func (p *Pool) fillBegan(id string) bool {
	_, err := os.Lstat(p.progressOf(id))
	return err == nil
}

// without is m without key k.
func without(m map[string]string, k string) map[string]string {
	out := make(map[string]string, len(m))
	for key, val := range m {
		if key != k {
			out[key] = val
		}
	}
	return out
}

// ownContent checks, by reading the disk now, that what volume v's disk d
// holds may be the volume's: no other volume of the pool recorded the
// filesystem on it, and a filesystem volume's disk holds nothing or the
// filesystem recorded as the volume's.
func (p *Pool) ownContent(ctx context.Context, v pool.Volume, d disk.Disk) error {
	sig, err := p.cfg.Probe.Probe(ctx, d.Device)
	if err != nil {
		return fmt.Errorf("volume %s: %w", v.ID, err)
	}
	if other := p.otherVolumeOwns(ctx, v.ID, sig.UUID); other != "" {
		return fmt.Errorf("%w: volume %s: disk %s (%s) carries the filesystem of volume %s (UUID %s)", pool.ErrInUse, v.ID, d.ID, d.Device, other, sig.UUID)
	}
	if v.Mode == pool.ModeFilesystem && !sig.Empty() && (v.DiskFsUUID == "" || !sig.Only(v.DiskFsUUID)) {
		return fmt.Errorf("%w: volume %s: disk %s (%s) holds %s, not the volume's filesystem (UUID %q)", pool.ErrInUse, v.ID, d.ID, d.Device, sig, v.DiskFsUUID)
	}
	return nil
}

// uuidRecorded names a volume of the pool other than id that recorded
// filesystem UUID uuid ("" when none).
func (p *Pool) uuidRecorded(id, uuid string) string {
	if uuid == "" {
		return ""
	}
	for _, v := range p.index.Volumes() {
		if v.ID != id && v.DiskFsUUID == uuid {
			return v.ID
		}
	}
	return ""
}

// ExportSnapshot: a whole disk has no snapshots.
func (p *Pool) ExportSnapshot(ctx context.Context, id string) (*os.File, pool.Snapshot, error) {
	return nil, pool.Snapshot{}, fmt.Errorf("%w: a disk pool has no snapshots", pool.ErrUnsupported)
}

// ExportVolume opens Ready volume id's disk read-only and exclusively, for
// a move's sync: nothing may mount or hold it while it is read. The caller
// keeps the volume's consumers away (it is held) and closes the file.
func (p *Pool) ExportVolume(ctx context.Context, id string) (*os.File, pool.Volume, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return nil, pool.Volume{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.index.Volume(id)
	if err != nil {
		return nil, pool.Volume{}, err
	}
	d, err := p.disk(id)
	if err != nil {
		return nil, pool.Volume{}, err
	}
	if err := p.inUse(d); err != nil {
		return nil, pool.Volume{}, fmt.Errorf("send volume %s: %w", id, err)
	}
	// What goes to the other node must be this volume's: a disk found
	// under its identity that carries another volume's filesystem, or a
	// filesystem the volume never recorded, is not sent.
	if v.Parameters[fillingKey] != "" {
		return nil, pool.Volume{}, fmt.Errorf("%w: volume %s is being filled from another node", pool.ErrNotReady, id)
	}
	if err := p.ownContent(ctx, v, d); err != nil {
		return nil, pool.Volume{}, fmt.Errorf("send volume %s: %w", id, err)
	}
	f, err := openDisk(d.Device, d.MajorMinor, unix.O_RDONLY)
	if err != nil {
		return nil, pool.Volume{}, fmt.Errorf("send volume %s: %w", id, err)
	}
	return f, v, nil
}

// openDisk opens the block device at dev with flags, exclusively, and
// checks that it is still the device majorMinor (the disk the pool found
// by identity), not another that took its name.
func openDisk(dev, majorMinor string, flags int) (*os.File, error) {
	fd, err := unix.Open(dev, flags|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("%w: %s is mounted or held", pool.ErrInUse, dev)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)) != majorMinor {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: %s is no longer the disk %s", pool.ErrInUse, dev, majorMinor)
	}
	return os.NewFile(uintptr(fd), dev), nil
}

// SyncTarget hands Ready volume id's disk over to be filled from another
// node: it must be the blank disk the volume was given (checked empty and
// unheld now, as at a first attach) or one this sync began filling.
func (p *Pool) SyncTarget(ctx context.Context, id string) (pool.ImportTarget, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return pool.ImportTarget{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.ImportTarget{}, err
	}
	d, err := p.disk(id)
	if err != nil {
		return pool.ImportTarget{}, err
	}
	switch {
	case v.Parameters[fillingKey] != "":
	case v.Parameters[filledKey] != "":
		// Filled before and never handed out since: the same sync again,
		// over what the earlier one wrote (fillingAgain).
		v.Parameters = pool.WithParameter(without(v.Parameters, filledKey), fillingKey, fillingAgain)
		if err := p.index.PutVolume(v); err != nil {
			return pool.ImportTarget{}, err
		}
	case v.DiskHanded:
		return pool.ImportTarget{}, fmt.Errorf("%w: volume %s: its disk was handed to a consumer; plinth does not overwrite it from another node", pool.ErrInUse, id)
	default:
		if err := p.verifyEmpty(ctx, d); err != nil {
			return pool.ImportTarget{}, fmt.Errorf("volume %s: its disk is not as it was when plinth chose it: %w", id, err)
		}
		v.Parameters = pool.WithParameter(v.Parameters, fillingKey, "true")
		v.DiskHanded = true
		if err := p.index.PutVolume(v); err != nil {
			return pool.ImportTarget{}, err
		}
	}
	if err := os.MkdirAll(p.importsDir(), 0o700); err != nil {
		return pool.ImportTarget{}, err
	}
	return pool.ImportTarget{
		Format:   pool.ImportDevice,
		Progress: p.progressOf(id),
		OpenDevice: func() (*os.File, error) {
			p.mu.Lock()
			defer p.mu.Unlock()
			v, err := p.index.Volume(id)
			if err != nil {
				return nil, err
			}
			if v.Parameters[fillingKey] == "" {
				return nil, fmt.Errorf("%w: volume %s is not being filled from another node", pool.ErrInUse, id)
			}
			d, err := p.disk(id)
			if err != nil {
				return nil, err
			}
			if err := p.inUse(d); err != nil {
				return nil, err
			}
			// Empty (as SyncTarget found it), or what a transfer began to
			// write: never a filesystem another volume recorded.
			sig, err := p.cfg.Probe.Probe(context.Background(), d.Device)
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", id, err)
			}
			if other := p.otherVolumeOwns(context.Background(), id, sig.UUID); other != "" {
				return nil, fmt.Errorf("%w: volume %s: disk %s (%s) carries the filesystem of volume %s: not filled", pool.ErrInUse, id, d.ID, d.Device, other)
			}
			if !sig.Empty() && !p.fillBegan(id) && v.Parameters[fillingKey] != fillingAgain {
				return nil, fmt.Errorf("%w: volume %s: disk %s (%s) holds %s, and no transfer wrote to it yet", pool.ErrInUse, id, d.ID, d.Device, sig)
			}
			return openDisk(d.Device, d.MajorMinor, unix.O_RDWR)
		},
	}, nil
}

// FinishSync records what the filled disk holds as the volume's: for a
// filesystem volume, the one filesystem of its type that came (or nothing,
// for a source never formatted). Idempotent.
func (p *Pool) FinishSync(ctx context.Context, id string) error {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.index.Volume(id)
	if err != nil {
		return err
	}
	if v.Parameters[fillingKey] == "" {
		return nil
	}
	d, err := p.disk(id)
	if err != nil {
		return err
	}
	sig, err := p.cfg.Probe.Probe(ctx, d.Device)
	if err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	if other := p.otherVolumeOwns(ctx, id, sig.UUID); other != "" {
		return fmt.Errorf("%w: volume %s: the disk filled from another node carries the filesystem of volume %s here (UUID %s)", pool.ErrInUse, id, other, sig.UUID)
	}
	// Two volumes with one filesystem UUID could no longer be told apart
	// by it (otherVolumeOwns): refused, whatever the other's disk holds.
	if other := p.uuidRecorded(id, sig.UUID); other != "" {
		return fmt.Errorf("%w: volume %s: the disk filled from another node carries UUID %s, which volume %s here recorded", pool.ErrInvalid, id, sig.UUID, other)
	}
	if v.Mode == pool.ModeFilesystem && !sig.Empty() {
		if sig.Type != v.FsType || !sig.Only(sig.UUID) {
			return fmt.Errorf("%w: volume %s: the disk filled from another node holds %s, not one %s filesystem", pool.ErrInvalid, id, sig, v.FsType)
		}
		v.DiskFsUUID = sig.UUID
	}
	v.Parameters = pool.WithParameter(without(v.Parameters, fillingKey), filledKey, "true")
	if err := p.index.PutVolume(v); err != nil {
		return err
	}
	if err := durable.Remove(p.progressOf(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		klog.ErrorS(err, "Remove the progress record of a finished sync", "volumeID", id)
	}
	klog.InfoS("Disk filled from another node", "pool", p.cfg.Name, "volumeID", id, "disk", d.ID, "holds", sig.String())
	return nil
}
