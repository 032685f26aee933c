package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// Guarded is a filesystem pool on claimed disks: while one of its disks is
// missing its stats fail (the pool is unhealthy and takes no new volumes)
// and a raid1 pool running on fewer disks says it is degraded.
type Guarded struct {
	pool.Pool
	members  []Disk
	watch    *Watcher
	degraded string
	dir      string
	// mirrored: the pool keeps every block on two disks (btrfs raid1),
	// so it serves, degraded, with one of them gone.
	mirrored bool
}

var _ pool.Pool = (*Guarded)(nil)

// Guard wraps p, made on members, with the watcher's view of its disks.
func Guard(p pool.Pool, r Ready, w *Watcher) *Guarded {
	return &Guarded{Pool: p, members: r.Members, watch: w, degraded: r.Degraded, dir: r.Dir,
		mirrored: r.Layout == LayoutBtrfs && r.Raid == "raid1"}
}

// missing lists the members the watcher no longer sees.
func (g *Guarded) missing() []string {
	var out []string
	for _, m := range g.members {
		if _, ok := g.watch.Find(m.ID); !ok {
			out = append(out, fmt.Sprintf("%s (was %s)", m.ID, m.Name))
		}
	}
	return out
}

// Stats fails while a disk is missing; a degraded pool's stats carry why.
func (g *Guarded) Stats(ctx context.Context) (pool.Stats, error) {
	gone := g.missing()
	degraded := g.degraded
	switch {
	case len(gone) == 1 && g.mirrored && len(g.members) >= 2 && degraded == "":
		degraded = fmt.Sprintf("disk %s is gone", gone[0])
	case len(gone) > 0:
		return pool.Stats{}, fmt.Errorf("%w: pool %s: disk %s is gone", pool.ErrNotReady, g.Name(), strings.Join(gone, ", "))
	}
	// statfs answers on a filesystem that has shut down (XFS after an I/O
	// error); reading its root directory does not.
	if err := readable(g.dir); err != nil {
		return pool.Stats{}, fmt.Errorf("%w: pool %s: its filesystem fails: %w", pool.ErrNotReady, g.Name(), err)
	}
	st, err := g.Pool.Stats(ctx)
	if err != nil {
		return st, err
	}
	st.Degraded = degraded
	return st, nil
}

// CheckVolume: every volume of the pool is out of reach while the pool's
// disks are missing or its filesystem fails.
func (g *Guarded) CheckVolume(ctx context.Context, id string) error {
	_, err := g.Stats(ctx)
	return err
}

var _ pool.VolumeChecker = (*Guarded)(nil)

// CreateVolume refuses while the pool is unhealthy.
func (g *Guarded) CreateVolume(ctx context.Context, v pool.Volume) (pool.Volume, error) {
	if _, err := g.Stats(ctx); err != nil {
		return pool.Volume{}, err
	}
	return g.Pool.CreateVolume(ctx, v)
}

// Unavailable stands for a pool that could not be opened (its disks are
// missing, or its filesystem would not mount): it is listed, unhealthy,
// with the reason, and refuses everything.
type Unavailable struct {
	PoolName, PoolBackend string
	Err                   error
}

var _ pool.Pool = Unavailable{}

func (u Unavailable) err() error {
	return fmt.Errorf("%w: pool %s cannot be opened: %v", pool.ErrNotReady, u.PoolName, u.Err)
}

func (u Unavailable) Name() string                              { return u.PoolName }
func (u Unavailable) Backend() string                           { return u.PoolBackend }
func (u Unavailable) Capabilities() pool.Capabilities           { return pool.Capabilities{} }
func (u Unavailable) Stats(context.Context) (pool.Stats, error) { return pool.Stats{}, u.err() }
func (u Unavailable) CreateVolume(context.Context, pool.Volume) (pool.Volume, error) {
	return pool.Volume{}, u.err()
}
func (u Unavailable) DeleteVolume(context.Context, string) error { return u.err() }
func (u Unavailable) ExpandVolume(context.Context, string, int64) (pool.Volume, error) {
	return pool.Volume{}, u.err()
}

// GetVolume: the pool's records are on its missing disks, so whether it
// holds a volume cannot be told (ErrNotReady: a delete is retried, not
// taken as done).
func (u Unavailable) GetVolume(context.Context, string) (pool.Volume, error) {
	return pool.Volume{}, u.err()
}
func (u Unavailable) ListVolumes(context.Context) ([]pool.Volume, error) { return nil, nil }
func (u Unavailable) CreateSnapshot(context.Context, pool.Snapshot) (pool.Snapshot, error) {
	return pool.Snapshot{}, u.err()
}
func (u Unavailable) DeleteSnapshot(context.Context, string) error { return u.err() }
func (u Unavailable) GetSnapshot(context.Context, string) (pool.Snapshot, error) {
	return pool.Snapshot{}, u.err()
}
func (u Unavailable) ListSnapshots(context.Context) ([]pool.Snapshot, error) { return nil, nil }
func (u Unavailable) Attach(context.Context, string) (pool.Attachment, error) {
	return pool.Attachment{}, u.err()
}
func (u Unavailable) Detach(context.Context, string) error { return u.err() }
func (u Unavailable) Attached(context.Context, string) (pool.Attachment, bool, error) {
	return pool.Attachment{}, false, nil
}
func (u Unavailable) AttachReadOnly(context.Context, string) (string, error) { return "", u.err() }
func (u Unavailable) ReleaseDevice(context.Context, string, string) error    { return u.err() }
func (u Unavailable) Usage(context.Context, string) (pool.VolumeUsage, bool, error) {
	return pool.VolumeUsage{}, false, nil
}

// readable reads one name from dir.
func readable(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}
