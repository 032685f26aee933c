package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/pool"
)

var (
	_ pool.Importer = (*Pool)(nil)
	_ pool.Exporter = (*Pool)(nil)
)

// importDir holds the progress records of images being filled from other
// nodes (the partial images are <volumes>/<id>.img.part).
func (p *Pool) importDir() string { return filepath.Join(p.dir, "imports") }

func (p *Pool) partImage(id string) string { return p.volImage(id) + ".part" }

// BeginImport records v (its capacity reserved, state creating) and says
// where its image is filled. The partial image and its progress record
// stay across restarts, until FinishImport or a delete.
func (p *Pool) BeginImport(ctx context.Context, v pool.Volume) (pool.ImportTarget, pool.Volume, error) {
	if err := pool.ValidateID("volume ID", v.ID); err != nil {
		return pool.ImportTarget{}, pool.Volume{}, err
	}
	if v.Source == nil || v.Source.Node == "" || v.Source.SnapshotID == "" {
		return pool.ImportTarget{}, pool.Volume{}, fmt.Errorf("%w: an import names a snapshot on another node", pool.ErrInvalid)
	}
	v, _, err := p.index.BeginVolumeAfterDelete(ctx, p.name, v, p.committed, p.DeleteVolume)
	if err != nil {
		return pool.ImportTarget{}, pool.Volume{}, err
	}
	if err := os.MkdirAll(p.importDir(), 0o700); err != nil {
		return pool.ImportTarget{}, pool.Volume{}, fmt.Errorf("create %s: %w", p.importDir(), err)
	}
	return pool.ImportTarget{Format: pool.ImportImage, Image: p.partImage(v.ID), Progress: filepath.Join(p.importDir(), v.ID+".json")}, v, nil
}

// FinishImport makes the filled image the volume's: it is checked for the
// size the volume records, preallocated when thick, fsynced and renamed
// into place, and the record marked ready. Idempotent.
func (p *Pool) FinishImport(ctx context.Context, id string) (pool.Volume, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Volume{}, err
	}
	if v.State == pool.StateReady {
		return v, nil
	}
	if v.State != pool.StateCreating || v.Source == nil || v.Source.Node == "" {
		return pool.Volume{}, fmt.Errorf("volume %s is %s, not an import in progress: %w", id, v.State, pool.ErrInvalid)
	}
	final, part := p.volImage(id), p.partImage(id)
	if _, err := os.Stat(final); err != nil {
		f, err := os.OpenFile(part, os.O_RDWR|unix.O_NOFOLLOW, 0)
		if err != nil {
			return pool.Volume{}, fmt.Errorf("open filled image %s: %w", part, err)
		}
		err = func() error {
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			if !st.Mode().IsRegular() || st.Size() > v.CapacityBytes {
				return fmt.Errorf("filled image %s is %d bytes, more than the volume's %d: %w", part, st.Size(), v.CapacityBytes, pool.ErrInvalid)
			}
			// The source may be smaller than the volume asked for (a
			// restore into a larger claim): the rest reads as zeros, and
			// the filesystem grows at stage, as after an expand.
			if err := sizeImage(f, v.CapacityBytes, false); err != nil {
				return err
			}
			if v.Thick {
				// Allocate what is still holes; data stays as it is.
				if err := unix.Fallocate(int(f.Fd()), 0, 0, v.CapacityBytes); err != nil {
					return mapNoSpace(fmt.Errorf("preallocate %s: %w", part, err))
				}
			}
			return f.Sync()
		}()
		if err != nil {
			return pool.Volume{}, err
		}
		if err := os.Rename(part, final); err != nil {
			return pool.Volume{}, fmt.Errorf("rename image %s: %w", part, err)
		}
		if err := durable.SyncDir(p.volDir()); err != nil {
			return pool.Volume{}, err
		}
	}
	v.State, v.Blank = pool.StateReady, false
	if err := p.index.PutVolume(v); err != nil {
		return pool.Volume{}, err
	}
	if err := durable.Remove(filepath.Join(p.importDir(), id+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		klog.ErrorS(err, "Remove the progress record of a finished import", "volumeID", id)
	}
	klog.InfoS("Volume filled from another node", "pool", p.name, "volumeID", id, "node", v.Source.Node, "snapshotID", v.Source.SnapshotID)
	return v, nil
}

// ExportSnapshot opens snapshot id's image read-only for a transfer to
// another node. The image never changes while the snapshot exists, and an
// open image stays readable if the snapshot is deleted meanwhile.
func (p *Pool) ExportSnapshot(ctx context.Context, id string) (*os.File, pool.Snapshot, error) {
	if err := pool.ValidateID("snapshot ID", id); err != nil {
		return nil, pool.Snapshot{}, err
	}
	s, err := p.index.Snapshot(id)
	if err != nil {
		return nil, pool.Snapshot{}, err
	}
	if s.State != pool.StateReady {
		return nil, pool.Snapshot{}, fmt.Errorf("snapshot %s is %s: %w", id, s.State, pool.ErrNotFound)
	}
	f, err := os.OpenFile(p.snapImage(id), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, pool.Snapshot{}, fmt.Errorf("open snapshot image: %w", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, pool.Snapshot{}, fmt.Errorf("snapshot image %s is not a regular file: %w", p.snapImage(id), pool.ErrInvalid)
	}
	return f, s, nil
}

var _ pool.Syncer = (*Pool)(nil)

// SyncTarget says where Ready volume id's image is brought up to date in
// place: the image itself, and a progress record of its own.
func (p *Pool) SyncTarget(ctx context.Context, id string) (pool.ImportTarget, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return pool.ImportTarget{}, err
	}
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.ImportTarget{}, err
	}
	if v.State != pool.StateReady {
		return pool.ImportTarget{}, fmt.Errorf("volume %s is %s: %w", id, v.State, pool.ErrNotReady)
	}
	if err := os.MkdirAll(p.importDir(), 0o700); err != nil {
		return pool.ImportTarget{}, fmt.Errorf("create %s: %w", p.importDir(), err)
	}
	return pool.ImportTarget{Format: pool.ImportImageDelta, Image: p.volImage(id), Progress: filepath.Join(p.importDir(), id+".sync.json")}, nil
}

// FinishSync drops the record of a sync that is done.
func (p *Pool) FinishSync(ctx context.Context, id string) error {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return err
	}
	if err := durable.Remove(filepath.Join(p.importDir(), id+".sync.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ExportVolume opens volume id's image read-only for a sync to another
// node. The caller makes sure nothing writes to it meanwhile (the volume is
// held and neither staged nor published).
func (p *Pool) ExportVolume(ctx context.Context, id string) (*os.File, pool.Volume, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return nil, pool.Volume{}, err
	}
	v, err := p.index.Volume(id)
	if err != nil {
		return nil, pool.Volume{}, err
	}
	if v.State != pool.StateReady {
		return nil, pool.Volume{}, fmt.Errorf("volume %s is %s: %w", id, v.State, pool.ErrNotReady)
	}
	f, err := os.OpenFile(p.volImage(id), os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, pool.Volume{}, fmt.Errorf("open volume image: %w", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, pool.Volume{}, fmt.Errorf("volume image %s is not a regular file: %w", p.volImage(id), pool.ErrInvalid)
	}
	return f, v, nil
}
