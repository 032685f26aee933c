package reconcile

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// UsageReader reads how many bytes a volume of this node holds.
type UsageReader interface {
	// VolumeUsage returns the volume's used bytes; ok is false where the
	// node cannot tell now (nothing to read without a mount).
	VolumeUsage(ctx context.Context, id string) (usedBytes int64, ok bool, err error)
}

// The bounds on usage writes. A volume's status.usedBytes is a write to
// the API server, and every write wakes every watcher of PlinthVolumes
// (the controller's informers): at 10,000 volumes one write per volume per
// read would be a storm of about 170 writes a second at a one-minute
// read. So the node reads every volume each UsageInterval, but writes a
// volume's usage only
//
//   - the first time (nothing published yet: once per volume, ever,
//     since the value stays in the object across node restarts);
//   - when it moved by at least usageThreshold of the volume's capacity
//     (at least 1 MiB), and the last write is usageMinInterval old;
//   - when it moved at all and the last write is usageMaxAge old;
//
// never when it did not change, and at most usageMaxWritesPerPass writes
// per pass per node (the rest wait for the next pass). The worst case,
// every volume of the cluster moving by 1% every 10 minutes, is 10,000 /
// 600 s ≈ 17 writes a second cluster-wide; a volume that does not change
// costs none.
const (
	defaultUsageInterval  = time.Minute
	usageMinInterval      = 10 * time.Minute
	usageMaxAge           = time.Hour
	usageThresholdPercent = 1
	usageThresholdFloor   = 1 << 20
	usageMaxWritesPerPass = 100
)

// usageDue reports whether a volume whose status is st and capacity
// capacity should have used bytes read at now written.
func usageDue(st v1alpha1.VolumeStatus, capacity, used int64, now time.Time) bool {
	if st.UsedBytes == nil || st.UsageTime == nil {
		return true
	}
	moved := used - *st.UsedBytes
	if moved == 0 {
		return false
	}
	age := now.Sub(st.UsageTime.Time)
	if age < usageMinInterval {
		return false
	}
	if max(moved, -moved) >= max(capacity*usageThresholdPercent/100, usageThresholdFloor) {
		return true
	}
	return age >= usageMaxAge
}

// poolOfVolumer is a node that finds a volume's pool (node.Local).
type poolOfVolumer interface {
	PoolOfVolume(ctx context.Context, id string) (pool.Pool, pool.Volume, error)
}

// poolUsage reads usage from the volume's pool (pool.Pool.Usage): the
// pools whose records know it (a btrfs pool's qgroups).
type poolUsage struct{ node poolOfVolumer }

func (p poolUsage) VolumeUsage(ctx context.Context, id string) (int64, bool, error) {
	pl, _, err := p.node.PoolOfVolume(ctx, id)
	if err != nil {
		return 0, false, err
	}
	u, ok, err := pl.Usage(ctx, id)
	return u.UsedBytes, ok, err
}

// usageReader is r.Usage, or else the pools' own usage where the node
// offers its pools.
func (r *Reconciler) usageReader() UsageReader {
	if r.Usage != nil {
		return r.Usage
	}
	if n, ok := r.Local.(poolOfVolumer); ok {
		return poolUsage{node: n}
	}
	return nil
}

// runUsage publishes the node's volumes' usage every UsageInterval until
// ctx ends.
func (r *Reconciler) runUsage(ctx context.Context) {
	reader := r.usageReader()
	if reader == nil {
		return
	}
	interval := r.UsageInterval
	if interval <= 0 {
		interval = defaultUsageInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		vols, err := r.volumes.List(labels.Everything())
		if err != nil {
			continue
		}
		r.publishUsage(ctx, reader, vols, time.Now())
	}
}

// publishUsage reads the usage of every Ready volume of vols and writes
// what usageDue asks for, at most usageMaxWritesPerPass; it returns the
// number of writes.
func (r *Reconciler) publishUsage(ctx context.Context, reader UsageReader, vols []*v1alpha1.PlinthVolume, now time.Time) int {
	logger := klog.FromContext(ctx)
	writes := 0
	for _, cached := range vols {
		if ctx.Err() != nil || writes >= usageMaxWritesPerPass {
			break
		}
		if cached.Spec.NodeName != r.NodeName || cached.DeletionTimestamp != nil || cached.Status.Phase != v1alpha1.VolumeReady ||
			cached.Status.Reason == v1alpha1.ReasonUnreachable {
			continue
		}
		used, ok, err := reader.VolumeUsage(ctx, cached.Name)
		if err != nil {
			logger.V(2).Info("Reading volume usage", "volumeID", cached.Name, "err", err)
			continue
		}
		if !ok || !usageDue(cached.Status, cached.Status.CapacityBytes, used, now) {
			continue
		}
		v := cached.DeepCopy()
		v.Status.UsedBytes, v.Status.UsageTime = &used, &metav1.Time{Time: now}
		writes++
		if err := r.writeStatus(ctx, v); err != nil && !apierrors.IsConflict(err) {
			logger.V(2).Info("Publishing volume usage", "volumeID", v.Name, "err", err)
		}
	}
	return writes
}
