package whole

import (
	"context"

	"github.com/plinth-dev/plinth/pkg/pool"
)

var _ pool.Modifier = (*Pool)(nil)

// ModifyVolume records a Ready volume's IO limits. Provisioning does not
// apply here: a whole disk is all allocated.
func (p *Pool) ModifyVolume(ctx context.Context, id string, m pool.Mutable) (pool.Volume, error) {
	return p.index.SetLimits(id, m, "a disk pool's volume is a whole disk, neither thin nor thick")
}
