package pool

import (
	"context"
	"fmt"
)

// Unavailable stands for a pool that could not be opened (its disks are
// missing, or its filesystem would not mount): it is listed, unhealthy,
// with the reason, and refuses everything.
type Unavailable struct {
	PoolName, PoolBackend string
	Err                   error
}

var _ Pool = Unavailable{}

func (u Unavailable) err() error {
	return fmt.Errorf("%w: pool %s cannot be opened: %v", ErrNotReady, u.PoolName, u.Err)
}

func (u Unavailable) Name() string                         { return u.PoolName }
func (u Unavailable) Backend() string                      { return u.PoolBackend }
func (u Unavailable) Capabilities() Capabilities           { return Capabilities{} }
func (u Unavailable) Stats(context.Context) (Stats, error) { return Stats{}, u.err() }
func (u Unavailable) CreateVolume(context.Context, Volume) (Volume, error) {
	return Volume{}, u.err()
}
func (u Unavailable) DeleteVolume(context.Context, string) error { return u.err() }
func (u Unavailable) ExpandVolume(context.Context, string, int64) (Volume, error) {
	return Volume{}, u.err()
}

// GetVolume: the pool's records are on its missing disks, so whether it
// holds a volume cannot be told (ErrNotReady: a delete is retried, not
// taken as done).
func (u Unavailable) GetVolume(context.Context, string) (Volume, error) {
	return Volume{}, u.err()
}
func (u Unavailable) ListVolumes(context.Context) ([]Volume, error) { return nil, nil }
func (u Unavailable) CreateSnapshot(context.Context, Snapshot) (Snapshot, error) {
	return Snapshot{}, u.err()
}
func (u Unavailable) DeleteSnapshot(context.Context, string) error { return u.err() }
func (u Unavailable) GetSnapshot(context.Context, string) (Snapshot, error) {
	return Snapshot{}, u.err()
}
func (u Unavailable) ListSnapshots(context.Context) ([]Snapshot, error) { return nil, nil }
func (u Unavailable) Attach(context.Context, string) (Attachment, error) {
	return Attachment{}, u.err()
}
func (u Unavailable) Detach(context.Context, string) error { return u.err() }
func (u Unavailable) Attached(context.Context, string) (Attachment, bool, error) {
	return Attachment{}, false, nil
}
func (u Unavailable) AttachReadOnly(context.Context, string) (string, error) { return "", u.err() }
func (u Unavailable) ReleaseDevice(context.Context, string, string) error    { return u.err() }
func (u Unavailable) Usage(context.Context, string) (VolumeUsage, bool, error) {
	return VolumeUsage{}, false, nil
}
