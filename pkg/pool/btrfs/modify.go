package btrfs

import (
	"context"
	"fmt"

	"github.com/plinth-dev/plinth/pkg/pool"
)

var _ pool.Modifier = (*Pool)(nil)

// ModifyVolume records a Ready volume's IO limits. Provisioning does not
// apply here: a subvolume holds what is written to it and no more (its limit is
// a quota), so it is neither thin nor thick.
func (p *Pool) ModifyVolume(ctx context.Context, id string, m pool.Mutable) (pool.Volume, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Volume{}, err
	}
	if v.State != pool.StateReady {
		return pool.Volume{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotReady)
	}
	if m.Thick != v.Thick {
		return pool.Volume{}, fmt.Errorf("%w: provisioning: a btrfs pool's volumes are subvolumes, neither thin nor thick", pool.ErrInvalid)
	}
	return p.index.SetMutable(id, m)
}
