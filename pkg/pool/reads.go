package pool

import "context"

// VolumeReads answers the Pool interface's GetVolume and ListVolumes from
// an Index's records; a backend embeds it (Index.VolumeReads).
type VolumeReads struct{ x *Index }

// SnapshotReads answers GetSnapshot and ListSnapshots likewise; a backend
// without snapshots answers them itself.
type SnapshotReads struct{ x *Index }

// VolumeReads serves GetVolume and ListVolumes from x.
func (x *Index) VolumeReads() VolumeReads { return VolumeReads{x} }

// SnapshotReads serves GetSnapshot and ListSnapshots from x.
func (x *Index) SnapshotReads() SnapshotReads { return SnapshotReads{x} }

func (r VolumeReads) GetVolume(_ context.Context, id string) (Volume, error) { return r.x.Volume(id) }
func (r VolumeReads) ListVolumes(context.Context) ([]Volume, error)          { return r.x.Volumes(), nil }

func (r SnapshotReads) GetSnapshot(_ context.Context, id string) (Snapshot, error) {
	return r.x.Snapshot(id)
}
func (r SnapshotReads) ListSnapshots(context.Context) ([]Snapshot, error) {
	return r.x.Snapshots(), nil
}
