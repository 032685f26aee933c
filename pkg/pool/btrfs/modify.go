package btrfs

import (
	"context"

	"github.com/plinth-dev/plinth/pkg/pool"
)

var _ pool.Modifier = (*Pool)(nil)

// ModifyVolume records a Ready volume's IO limits. Provisioning does not
// apply here: a subvolume holds what is written to it and no more (its limit is
// a quota), so it is neither thin nor thick.
func (p *Pool) ModifyVolume(ctx context.Context, id string, m pool.Mutable) (pool.Volume, error) {
	return p.index.SetLimits(id, m, "a btrfs pool's volumes are subvolumes, neither thin nor thick")
}
