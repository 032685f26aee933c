package volume

import (
	"context"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// PoolInfo is what a node says about one of its pools.
type PoolInfo struct {
	Name         string
	Backend      string
	Capabilities pool.Capabilities
	Stats        pool.Stats
}

// Node is the seam between deciding (the controller) and doing (the node):
// everything the controller asks of a node goes through it. In standalone
// mode it is a node.Local in the same process; in a cluster it is carried by
// the volume objects the node reconciles.
type Node interface {
	Pools(ctx context.Context) ([]PoolInfo, error)
	CreateVolume(ctx context.Context, poolName string, v pool.Volume) (pool.Volume, error)
	DeleteVolume(ctx context.Context, id string) error
	ExpandVolume(ctx context.Context, id string, capacityBytes int64) (pool.Volume, error)
	// ModifyVolume makes the volume's mutable attributes m and returns
	// the volume once its node has applied them.
	ModifyVolume(ctx context.Context, id string, m pool.Mutable) (pool.Volume, error)
	Volume(ctx context.Context, id string) (pool.Volume, error)
	Volumes(ctx context.Context) ([]pool.Volume, error)
	Snapshot(ctx context.Context, id string) (pool.Snapshot, error)
	CreateSnapshot(ctx context.Context, s pool.Snapshot) (pool.Snapshot, error)
	DeleteSnapshot(ctx context.Context, id string) error
	Snapshots(ctx context.Context) ([]pool.Snapshot, error)
}
