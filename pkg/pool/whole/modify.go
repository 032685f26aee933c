package whole

import (
	"context"
	"fmt"

	"github.com/plinth-dev/plinth/pkg/pool"
)

var _ pool.Modifier = (*Pool)(nil)

// ModifyVolume records a Ready volume's IO limits. Provisioning does not
// apply here: a whole disk is all allocated.
func (p *Pool) ModifyVolume(ctx context.Context, id string, m pool.Mutable) (pool.Volume, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Volume{}, err
	}
	if v.State != pool.StateReady {
		return pool.Volume{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotReady)
	}
	if m.Thick != v.Thick {
		return pool.Volume{}, fmt.Errorf("%w: provisioning: a disk pool's volume is a whole disk, neither thin nor thick", pool.ErrInvalid)
	}
	return p.index.SetMutable(id, m)
}
