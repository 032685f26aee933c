package guard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// Disks finds the node's disks as last read (disk.Watcher).
type Disks interface {
	Find(id string) (disk.Disk, bool)
}

// Pool is a filesystem pool on claimed disks: while one of its disks is
// missing its stats fail (the pool is unhealthy and takes no new volumes)
// and a raid1 pool running on fewer disks says it is degraded.
type Pool struct {
	pool.Pool
	members  []disk.Disk
	watch    Disks
	degraded string
	dir      string
	// mirrored: the pool keeps every block on two disks (btrfs raid1),
	// so it serves, degraded, with one of them gone.
	mirrored bool
}

var (
	_ pool.Pool    = (*Pool)(nil)
	_ pool.Wrapper = (*Pool)(nil)
)

// Unwrap is the pool the guard wraps: its optional interfaces (a file
// pool's AttachedAll, MarkFormatted, imports) are found through it
// (pool.As).
func (g *Pool) Unwrap() pool.Pool { return g.Pool }

// New wraps p, opened on r's disks, with the watcher's view of them.
func New(p pool.Pool, r disk.Ready, w Disks) *Pool {
	return &Pool{Pool: p, members: r.Members, watch: w, degraded: r.Degraded, dir: r.Dir,
		mirrored: r.Layout == disk.LayoutBtrfs && r.Raid == "raid1"}
}

// missing lists the members the watcher no longer sees.
func (g *Pool) missing() []string {
	var out []string
	for _, m := range g.members {
		if _, ok := g.watch.Find(m.ID); !ok {
			out = append(out, fmt.Sprintf("%s (was %s)", m.ID, m.Name))
		}
	}
	return out
}

// Stats fails while a disk is missing; a degraded pool's stats carry why.
func (g *Pool) Stats(ctx context.Context) (pool.Stats, error) {
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
func (g *Pool) CheckVolume(ctx context.Context, id string) error {
	_, err := g.Stats(ctx)
	return err
}

var _ pool.VolumeChecker = (*Pool)(nil)

// CreateVolume refuses while the pool is unhealthy.
func (g *Pool) CreateVolume(ctx context.Context, v pool.Volume) (pool.Volume, error) {
	if _, err := g.Stats(ctx); err != nil {
		return pool.Volume{}, err
	}
	return g.Pool.CreateVolume(ctx, v)
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
