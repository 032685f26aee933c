package volume

import (
	"context"
	"fmt"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// goneNode stands for a node the controller no longer knows: every call
// fails with ErrNodeGone, so a volume on a lost node is reported, never
// silently dropped.
type goneNode string

var _ Node = goneNode("")

func (g goneNode) err() error { return fmt.Errorf("%w: %s", ErrNodeGone, string(g)) }

func (g goneNode) Pools(context.Context) ([]PoolInfo, error) { return nil, g.err() }
func (g goneNode) CreateVolume(context.Context, string, pool.Volume) (pool.Volume, error) {
	return pool.Volume{}, g.err()
}
func (g goneNode) DeleteVolume(context.Context, string) error { return g.err() }
func (g goneNode) ExpandVolume(context.Context, string, int64) (pool.Volume, error) {
	return pool.Volume{}, g.err()
}
func (g goneNode) ModifyVolume(context.Context, string, pool.Mutable) (pool.Volume, error) {
	return pool.Volume{}, g.err()
}
func (g goneNode) Volume(context.Context, string) (pool.Volume, error) {
	return pool.Volume{}, g.err()
}
func (g goneNode) Volumes(context.Context) ([]pool.Volume, error) { return nil, g.err() }
func (g goneNode) Snapshot(context.Context, string) (pool.Snapshot, error) {
	return pool.Snapshot{}, g.err()
}
func (g goneNode) CreateSnapshot(context.Context, pool.Snapshot) (pool.Snapshot, error) {
	return pool.Snapshot{}, g.err()
}
func (g goneNode) DeleteSnapshot(context.Context, string) error { return g.err() }
func (g goneNode) Snapshots(context.Context) ([]pool.Snapshot, error) {
	return nil, g.err()
}
