package provision

import (
	"context"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// A snapshot in the cluster is a PlinthSnapshot object: the controller
// writes it in the source volume's node and pool, the node takes the
// snapshot and writes its status, and deleting the object (its finalizer
// held by the node) removes the snapshot from the node.

// SnapshotObject returns the snapshot object with this ID from the cache.
func (c *Cluster) SnapshotObject(id string) (*v1alpha1.PlinthSnapshot, bool) {
	s, err := c.snapshotStore.Get(id)
	if err != nil {
		return nil, false
	}
	return s, true
}

// SnapshotObjects returns every snapshot object, sorted by name.
func (c *Cluster) SnapshotObjects() []*v1alpha1.PlinthSnapshot {
	out, _ := c.snapshotStore.List(labels.Everything())
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// toSnapshot is the pool's view of a snapshot object.
func toSnapshot(s *v1alpha1.PlinthSnapshot) pool.Snapshot {
	out := pool.Snapshot{
		ID: s.Name, Name: s.Spec.SnapshotName, Pool: s.Spec.Pool, SourceVolumeID: s.Spec.SourceVolumeID,
		FsType: s.Status.FsType, SizeBytes: s.Status.SizeBytes, State: pool.StateCreating, CreatedAt: s.CreationTimestamp.Time,
	}
	if s.Status.Mode != "" {
		out.Mode = poolMode(s.Status.Mode)
	}
	if s.Status.CreationTime != nil {
		out.CreatedAt = s.Status.CreationTime.Time
	}
	switch {
	case s.DeletionTimestamp != nil || s.Status.Phase == v1alpha1.VolumeDeleting:
		out.State = pool.StateDeleting
	case s.Status.Phase == v1alpha1.VolumeReady:
		out.State = pool.StateReady
	}
	return out
}

func (n *remoteNode) Snapshot(_ context.Context, id string) (pool.Snapshot, error) {
	s, ok := n.c.SnapshotObject(id)
	if !ok || s.Spec.NodeName != n.name {
		return pool.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, pool.ErrNotFound)
	}
	return toSnapshot(s), nil
}

func (n *remoteNode) Snapshots(context.Context) ([]pool.Snapshot, error) {
	var out []pool.Snapshot
	for _, s := range n.c.SnapshotObjects() {
		if s.Spec.NodeName == n.name {
			out = append(out, toSnapshot(s))
		}
	}
	return out, nil
}

// CreateSnapshot writes the snapshot object (once) and waits a while for
// the node to take it. A snapshot the node has not taken yet is answered
// as it is, not ready: the caller asks again (CSI's CreateSnapshot and the
// snapshotter both do), and the object keeps the request across restarts.
func (n *remoteNode) CreateSnapshot(ctx context.Context, want pool.Snapshot) (pool.Snapshot, error) {
	c := n.c
	src, ok := c.Volume(want.SourceVolumeID)
	if !ok || src.Spec.NodeName != n.name {
		return pool.Snapshot{}, fmt.Errorf("source volume %s: %w", want.SourceVolumeID, pool.ErrNotFound)
	}
	if s, ok := c.SnapshotObject(want.ID); ok {
		if s.Spec.SourceVolumeID != want.SourceVolumeID || s.Spec.NodeName != n.name {
			return pool.Snapshot{}, fmt.Errorf("snapshot %s of volume %s: %w", want.ID, s.Spec.SourceVolumeID, pool.ErrExists)
		}
	} else {
		obj := &v1alpha1.PlinthSnapshot{
			ObjectMeta: metav1.ObjectMeta{
				Name:       want.ID,
				Labels:     map[string]string{v1alpha1.LabelNode: n.name, v1alpha1.LabelPool: src.Spec.Pool},
				Finalizers: []string{v1alpha1.Finalizer},
			},
			Spec: v1alpha1.SnapshotSpec{
				NodeName: n.name, Pool: src.Spec.Pool, SourceVolumeID: want.SourceVolumeID, SnapshotName: want.Name,
			},
		}
		if _, err := c.snapClient.Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return pool.Snapshot{}, fmt.Errorf("record snapshot %s: %w", want.ID, err)
		}
	}
	var out pool.Snapshot
	err := c.wait(ctx, "snapshot "+want.ID, func() (bool, error) {
		s, ok := c.SnapshotObject(want.ID)
		if !ok {
			return false, nil // our create is not in the cache yet
		}
		out = toSnapshot(s)
		switch s.Status.Phase {
		case v1alpha1.VolumeReady:
			return true, nil
		case v1alpha1.VolumeFailed:
			// The node refused: drop the object so that a retry starts
			// afresh, and say why.
			failure := nodeError(s.Spec.NodeName, s.Status.Reason, s.Status.Message)
			if err := c.deleteSnapshotObject(ctx, s.Name); err != nil {
				return true, fmt.Errorf("%w (and removing the failed snapshot object: %v)", failure, err)
			}
			return true, failure
		}
		return false, nil
	})
	if err != nil && !isInProgress(err) {
		return pool.Snapshot{}, err
	}
	return out, nil // ready, or still being taken
}

// DeleteSnapshot deletes the snapshot object and waits for its node to
// remove the snapshot (the object goes when the node drops its finalizer).
func (n *remoteNode) DeleteSnapshot(ctx context.Context, id string) error {
	s, ok := n.c.SnapshotObject(id)
	if !ok {
		return nil
	}
	if n.c.nodeGone(s.Spec.NodeName) {
		return fmt.Errorf("%w: snapshot %s is on node %s, which has left the cluster; its storage cannot be removed from here and the snapshot object is kept",
			volume.ErrNodeGone, id, s.Spec.NodeName)
	}
	if s.DeletionTimestamp == nil {
		if err := n.c.deleteSnapshotObject(ctx, id); err != nil {
			return fmt.Errorf("delete snapshot object %s: %w", id, err)
		}
	}
	return n.c.wait(ctx, "snapshot "+id, func() (bool, error) {
		_, ok := n.c.SnapshotObject(id)
		return !ok, nil
	})
}

func (c *Cluster) deleteSnapshotObject(ctx context.Context, id string) error {
	err := c.snapClient.Delete(ctx, id, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
