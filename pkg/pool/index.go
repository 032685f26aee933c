package pool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/pkg/durable"
	"k8s.io/klog/v2"
)

// Index is a backend's view of its volume and snapshot records: loaded from
// disk at start, kept in memory, written through atomically. Its mutex makes
// "check capacity, then reserve" one step and is never held across I/O on
// volume data.
type Index struct {
	mu        sync.Mutex
	volDir    string
	snapDir   string
	volumes   map[string]Volume
	snapshots map[string]Snapshot
}

// OpenIndex creates volDir and snapDir if needed, removes leftovers of
// interrupted atomic writes and loads every record. Snapshot records from
// before plinth recorded a snapshot's mode get it from their source volume
// where they can (inheritModes).
func OpenIndex(volDir, snapDir string) (*Index, error) {
	x := &Index{volDir: volDir, snapDir: snapDir, volumes: map[string]Volume{}, snapshots: map[string]Snapshot{}}
	for _, d := range []string{volDir, snapDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		if err := durable.CleanTemp(d); err != nil {
			return nil, err
		}
	}
	ids, err := RecordIDs(volDir)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		var v Volume
		if err := ReadRecord(VolumeRecords, x.volRecord(id), &v); err != nil {
			return nil, err
		}
		x.volumes[id] = v
	}
	if ids, err = RecordIDs(snapDir); err != nil {
		return nil, err
	}
	for _, id := range ids {
		var s Snapshot
		if err := ReadRecord(SnapshotRecords, x.snapRecord(id), &s); err != nil {
			return nil, err
		}
		x.snapshots[id] = s
	}
	x.inheritModes()
	return x, nil
}

// inheritModes fills in the mode and fs type of snapshots recorded before
// plinth kept them, from their source volume's record, and writes the
// filled record back so that it outlives the source. A failed write keeps
// the fill in memory for this run: the record stays as readable as before.
func (x *Index) inheritModes() {
	for id, s := range x.snapshots {
		if !x.inheritLocked(&s) {
			continue
		}
		x.snapshots[id] = s
		if err := SnapshotRecords.Write(x.snapRecord(id), s); err != nil {
			klog.ErrorS(err, "Record the mode of a snapshot made before modes were recorded", "snapshotID", id)
			continue
		}
		klog.InfoS("Snapshot's mode recorded from its source volume", "snapshotID", id, "mode", s.Mode, "fsType", s.FsType)
	}
}

// inheritLocked fills s's mode and fs type from its source volume's record
// when s has none, and reports whether it did. Only the volume the snapshot
// was taken of counts: one made after the snapshot (the source deleted and
// made again under the same name, so the same ID) may be of another mode.
func (x *Index) inheritLocked(s *Snapshot) bool {
	if s.Mode != "" {
		return false
	}
	src, ok := x.volumes[s.SourceVolumeID]
	if !ok || src.Mode == "" || src.CreatedAt.IsZero() || src.CreatedAt.After(s.CreatedAt) {
		return false
	}
	s.Mode, s.FsType = src.Mode, src.FsType
	return true
}

// Only IDs that passed ValidateID reach these joins.
func (x *Index) volRecord(id string) string  { return filepath.Join(x.volDir, id+".json") }
func (x *Index) snapRecord(id string) string { return filepath.Join(x.snapDir, id+".json") }

// Counts returns how many volumes and snapshots are recorded.
func (x *Index) Counts() (volumes, snapshots int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.volumes), len(x.snapshots)
}

// Volume returns the record of id.
func (x *Index) Volume(id string) (Volume, error) {
	if err := ValidateID("volume ID", id); err != nil {
		return Volume{}, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	v, ok := x.volumes[id]
	if !ok {
		return Volume{}, fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	return v, nil
}

// Snapshot returns the record of id.
func (x *Index) Snapshot(id string) (Snapshot, error) {
	if err := ValidateID("snapshot ID", id); err != nil {
		return Snapshot{}, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	s, ok := x.snapshots[id]
	if !ok {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
	}
	return s, nil
}

// Volumes returns every volume record.
func (x *Index) Volumes() []Volume {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]Volume, 0, len(x.volumes))
	for _, v := range x.volumes {
		out = append(out, v)
	}
	return out
}

// Snapshots returns every snapshot record.
func (x *Index) Snapshots() []Snapshot {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]Snapshot, 0, len(x.snapshots))
	for _, s := range x.snapshots {
		out = append(out, s)
	}
	return out
}

// PutVolume writes v's record and indexes it.
func (x *Index) PutVolume(v Volume) error {
	if err := VolumeRecords.Write(x.volRecord(v.ID), v); err != nil {
		return err
	}
	x.mu.Lock()
	x.volumes[v.ID] = v
	x.mu.Unlock()
	return nil
}

// ReadyVolume returns the record of id, ErrNotReady unless it is Ready.
func (x *Index) ReadyVolume(id string) (Volume, error) {
	v, err := x.Volume(id)
	if err != nil {
		return Volume{}, err
	}
	if v.State != StateReady {
		return Volume{}, fmt.Errorf("volume %s: %w", id, ErrNotReady)
	}
	return v, nil
}

// SetLimits is ModifyVolume for a pool whose volumes are neither thin nor
// thick: it records a Ready volume's IO limits, and refuses a change of
// its provisioning (ErrInvalid, for the reason why).
func (x *Index) SetLimits(id string, m Mutable, why string) (Volume, error) {
	v, err := x.ReadyVolume(id)
	if err != nil {
		return Volume{}, err
	}
	if m.Thick != v.Thick {
		return Volume{}, fmt.Errorf("%w: provisioning: %s", ErrInvalid, why)
	}
	return x.SetMutable(id, m)
}

// SetMutable records m for the volume id: its IO limits and its
// provisioning (the storage already matches it); it returns the record.
func (x *Index) SetMutable(id string, m Mutable) (Volume, error) {
	v, err := x.Volume(id)
	if err != nil {
		return Volume{}, err
	}
	if MutableOf(v).Equal(m) {
		return v, nil
	}
	v.Thick, v.IOLimits = m.Thick, nil
	if !m.IOLimits.IsZero() {
		l := *m.IOLimits
		v.IOLimits = &l
	}
	if err := x.PutVolume(v); err != nil {
		return Volume{}, err
	}
	return v, nil
}

// PutSnapshot writes s's record and indexes it.
func (x *Index) PutSnapshot(s Snapshot) error {
	if err := SnapshotRecords.Write(x.snapRecord(s.ID), s); err != nil {
		return err
	}
	x.mu.Lock()
	x.snapshots[s.ID] = s
	x.mu.Unlock()
	return nil
}

// MarkDeleting records that a delete of id began, so that a crash part-way
// leaves a record that says so (and is never taken for a ready volume).
func (x *Index) MarkDeleting(id string) error {
	x.mu.Lock()
	v, ok := x.volumes[id]
	x.mu.Unlock()
	if !ok || v.State == StateDeleting {
		return nil
	}
	v.State = StateDeleting
	return x.PutVolume(v)
}

// DropVolume removes v's record durably.
func (x *Index) DropVolume(id string) error {
	// A newer plinth's record (it replaced ours since the index loaded)
	// stays.
	if err := VolumeRecords.Guard(x.volRecord(id)); err != nil {
		return err
	}
	if err := durable.Remove(x.volRecord(id)); err != nil {
		return err
	}
	x.mu.Lock()
	delete(x.volumes, id)
	x.mu.Unlock()
	return nil
}

// DropSnapshot removes s's record durably.
func (x *Index) DropSnapshot(id string) error {
	// A newer plinth's record (it replaced ours since the index loaded)
	// stays.
	if err := SnapshotRecords.Guard(x.snapRecord(id)); err != nil {
		return err
	}
	if err := durable.Remove(x.snapRecord(id)); err != nil {
		return err
	}
	x.mu.Lock()
	delete(x.snapshots, id)
	x.mu.Unlock()
	return nil
}

// SameVolume reports whether two requests describe the same volume.
func SameVolume(a, b Volume) bool {
	sa, sb := Source{}, Source{}
	if a.Source != nil {
		sa = *a.Source
	}
	if b.Source != nil {
		sb = *b.Source
	}
	return a.Name == b.Name && a.CapacityBytes == b.CapacityBytes && a.Mode == b.Mode &&
		a.FsType == b.FsType && a.Thick == b.Thick && sa == sb
}

// Committed is how a backend counts what its records may still claim.
type Committed func(vols []Volume, snaps []Snapshot) (Stats, error)

// BeginVolume starts or resumes creating v. It returns done=true with the
// existing record when the volume is already complete, the "creating"
// record to finish otherwise. A new record is written only when stats say
// the capacity fits, as one step with respect to other creates in the pool.
func (x *Index) BeginVolume(poolName string, v Volume, stats Committed) (Volume, bool, error) {
	x.mu.Lock()
	if old, ok := x.volumes[v.ID]; ok {
		x.mu.Unlock()
		if old.State == StateDeleting {
			return Volume{}, false, fmt.Errorf("volume %s: %w", v.ID, ErrDeleting)
		}
		if !SameVolume(old, v) {
			return Volume{}, false, fmt.Errorf("volume %s: %w", v.ID, ErrExists)
		}
		return old, old.State == StateReady, nil
	}
	if err := x.fitsLocked(poolName, v.CapacityBytes, stats); err != nil {
		x.mu.Unlock()
		return Volume{}, false, err
	}
	// Reserve in memory, then write the record without holding the lock:
	// creates in one pool do not queue behind each other's fsync. Callers
	// serialise calls per ID, so nobody else writes this record meanwhile.
	v.Schema, v.Pool, v.State, v.CreatedAt = VolumeRecords.Version(), poolName, StateCreating, time.Now().UTC()
	x.volumes[v.ID] = v
	x.mu.Unlock()
	if err := VolumeRecords.Write(x.volRecord(v.ID), v); err != nil {
		x.mu.Lock()
		delete(x.volumes, v.ID)
		x.mu.Unlock()
		return Volume{}, false, err
	}
	return v, false, nil
}

// BeginVolumeAfterDelete is BeginVolume that first finishes, with del, a
// delete of the same ID that was interrupted, so that old content never
// comes back under a new volume.
func (x *Index) BeginVolumeAfterDelete(ctx context.Context, poolName string, v Volume, stats Committed, del func(context.Context, string) error) (Volume, bool, error) {
	got, done, err := x.BeginVolume(poolName, v, stats)
	if errors.Is(err, ErrDeleting) {
		if err := del(ctx, v.ID); err != nil {
			return Volume{}, false, err
		}
		got, done, err = x.BeginVolume(poolName, v, stats)
	}
	return got, done, err
}

// BeginSnapshot is BeginVolume for snapshots of a ready source volume. The
// record carries the source's mode and fs type, which every volume restored
// from the snapshot must keep (Source).
func (x *Index) BeginSnapshot(poolName string, s Snapshot) (Snapshot, bool, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.snapshots[s.ID]; ok {
		if old.SourceVolumeID != s.SourceVolumeID || old.Name != s.Name {
			return Snapshot{}, false, fmt.Errorf("snapshot %s: %w", s.ID, ErrExists)
		}
		// A creating record left by a plinth that did not record modes is
		// finished with the mode (the backend writes it when done).
		if x.inheritLocked(&old) {
			x.snapshots[s.ID] = old
		}
		return old, old.State == StateReady, nil
	}
	src, ok := x.volumes[s.SourceVolumeID]
	if !ok || src.State != StateReady {
		return Snapshot{}, false, fmt.Errorf("source volume %s: %w", s.SourceVolumeID, ErrNotFound)
	}
	s.Schema, s.Pool, s.SizeBytes, s.State, s.CreatedAt = SnapshotRecords.Version(), poolName, src.CapacityBytes, StateCreating, time.Now().UTC()
	s.Mode, s.FsType = src.Mode, src.FsType
	if err := SnapshotRecords.Write(x.snapRecord(s.ID), s); err != nil {
		return Snapshot{}, false, err
	}
	x.snapshots[s.ID] = s
	return s, false, nil
}

// Fits checks that extra bytes can be committed in the pool now.
func (x *Index) Fits(poolName string, extra int64, stats Committed) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.fitsLocked(poolName, extra, stats)
}

func (x *Index) fitsLocked(poolName string, extra int64, stats Committed) error {
	vols := make([]Volume, 0, len(x.volumes))
	for _, v := range x.volumes {
		vols = append(vols, v)
	}
	snaps := make([]Snapshot, 0, len(x.snapshots))
	for _, s := range x.snapshots {
		snaps = append(snaps, s)
	}
	st, err := stats(vols, snaps)
	if err != nil {
		return err
	}
	if st.AllocatableBytes() < extra {
		return fmt.Errorf("%w: pool %s has %d bytes allocatable, %d requested", ErrNoSpace, poolName, st.AllocatableBytes(), extra)
	}
	return nil
}

// Source resolves a new volume's content source to the record it names and
// checks that the new volume keeps the source's mode and filesystem
// (sameKind) and that the source fits in the requested capacity.
func (x *Index) Source(v Volume) (srcVol *Volume, srcSnap *Snapshot, err error) {
	if v.Source == nil {
		return nil, nil, nil
	}
	var size int64
	switch {
	case v.Source.SnapshotID != "":
		s, err := x.Snapshot(v.Source.SnapshotID)
		if err != nil || s.State != StateReady {
			return nil, nil, fmt.Errorf("source snapshot %s: %w", v.Source.SnapshotID, ErrNotFound)
		}
		if err := sameKind("snapshot "+s.ID, s.Mode, s.FsType, v); err != nil {
			return nil, nil, err
		}
		size, srcSnap = s.SizeBytes, &s
	case v.Source.VolumeID != "":
		src, err := x.Volume(v.Source.VolumeID)
		if err != nil || src.State != StateReady {
			return nil, nil, fmt.Errorf("source volume %s: %w", v.Source.VolumeID, ErrNotFound)
		}
		if err := sameKind("source volume "+src.ID, src.Mode, src.FsType, v); err != nil {
			return nil, nil, err
		}
		size, srcVol = src.CapacityBytes, &src
	}
	if size > v.CapacityBytes {
		return nil, nil, fmt.Errorf("%w: source is %d bytes, larger than the %d requested", ErrOutOfRange, size, v.CapacityBytes)
	}
	return srcVol, srcSnap, nil
}

// sameKind checks that a volume made from a source (what: the source, for
// the message) keeps the source's mode and filesystem: the bytes of a block
// volume mounted as a filesystem would mount whatever image a tenant wrote
// (setuid binaries, device nodes), and one filesystem mounted as another
// never stages. An empty mode (a snapshot recorded before plinth kept modes,
// whose source volume is gone) passes here: a pool cannot tell what it may
// hold, and volume.Controller, which knows the pool's backend, decides.
func sameKind(what string, mode Mode, fsType string, v Volume) error {
	switch {
	case mode == "":
		return nil
	case mode != v.Mode:
		return fmt.Errorf("%w: %s is of a %s volume, the new volume is %s: a clone or restore keeps its source's mode", ErrInvalid, what, mode, v.Mode)
	case mode == ModeFilesystem && v.FsType != fsType:
		return fmt.Errorf("%w: %s holds %s, the new volume asks for %q: a clone or restore keeps its source's filesystem", ErrInvalid, what, fsType, v.FsType)
	}
	return nil
}

// LogLoaded reports what a pool found on disk at start.
func (x *Index) LogLoaded(poolName, backend, dir string) {
	v, s := x.Counts()
	klog.InfoS("Pool loaded", "pool", poolName, "backend", backend, "dir", dir, "volumes", v, "snapshots", s)
}
