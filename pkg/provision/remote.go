package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// remoteNode is a volume.Node in the cluster: each request becomes a change
// to a PlinthVolume object, and the answer is the status its node writes.
type remoteNode struct {
	c    *Cluster
	name string
}

var _ volume.Node = (*remoteNode)(nil)

func (n *remoteNode) Pools(context.Context) ([]volume.PoolInfo, error) {
	return n.c.poolInfos(n.name)
}

// objectMode is a pool mode as a PlinthVolume spells it (Filesystem, Block).
func objectMode(m pool.Mode) string {
	if m == pool.ModeBlock {
		return v1alpha1.ModeBlock
	}
	return v1alpha1.ModeFilesystem
}

// poolMode is a PlinthVolume's mode as the pools spell it (filesystem, block).
func poolMode(m string) pool.Mode {
	if m == v1alpha1.ModeBlock {
		return pool.ModeBlock
	}
	return pool.ModeFilesystem
}

// toVolume is the pool's view of a volume object.
func toVolume(v *v1alpha1.PlinthVolume) pool.Volume {
	out := pool.Volume{
		ID: v.Name, Name: v.Spec.VolumeName, Pool: v.Spec.Pool, CapacityBytes: v.Spec.CapacityBytes,
		Mode: poolMode(v.Spec.Mode), FsType: v.Spec.FsType, Thick: v.Spec.Thick, State: pool.StateCreating,
		CreatedAt: v.CreationTimestamp.Time,
	}
	if src := v.Spec.Source; src != nil {
		out.Source = &pool.Source{SnapshotID: src.SnapshotID, VolumeID: src.VolumeID, Node: src.NodeName}
	}
	out.IOLimits = poolLimits(v.Spec.IOLimits)
	if a := v.Status.Applied; a != nil && v.Status.Phase == v1alpha1.VolumeReady {
		out.Thick, out.IOLimits = a.Thick, poolLimits(a.IOLimits) // what the node made true
	}
	switch {
	case v.DeletionTimestamp != nil || v.Status.Phase == v1alpha1.VolumeDeleting:
		out.State = pool.StateDeleting
	case v.Status.Phase == v1alpha1.VolumeReady:
		out.State = pool.StateReady
		out.CapacityBytes = v.Status.CapacityBytes
		if v.Status.Reason == v1alpha1.ReasonUnreachable || v.Status.Reason == v1alpha1.ReasonError {
			out.Problem = v.Status.Message // the node says the storage is out of reach
		}
	}
	return out
}

func (n *remoteNode) CreateVolume(ctx context.Context, poolName string, want pool.Volume) (pool.Volume, error) {
	if err := n.reserveAndRecord(ctx, poolName, want); err != nil {
		return pool.Volume{}, err
	}
	var out pool.Volume
	refused := false
	err := n.c.waitVolume(ctx, want.ID, func(v *v1alpha1.PlinthVolume, ok bool) (bool, error) {
		if !ok {
			return false, nil // our create is not in the cache yet
		}
		switch v.Status.Phase {
		case v1alpha1.VolumeReady:
			out = toVolume(v)
			return true, nil
		case v1alpha1.VolumeFailed:
			// The node refused: drop the object so that a retry starts
			// afresh, and say why.
			refused = true
			failure := errorOf(v)
			if err := n.c.deleteObject(ctx, v.Name); err != nil {
				return true, fmt.Errorf("%w (and removing the failed volume object: %v)", failure, err)
			}
			return true, failure
		}
		return false, nil
	})
	if refused {
		// Its reservation goes with it (the object may leave the cache
		// before anything sees it answered), and the next node or the
		// next try must not find the refused object still cached (it would
		// read as the same volume elsewhere): wait briefly for it to go.
		n.c.release(want.ID)
		n.c.waitGone(ctx, want.ID, 10*time.Second)
	}
	return out, err
}

// reserveAndRecord checks that the pool still has room once every other
// create in flight is counted, records the reservation, and writes the
// volume object (whose Pending phase keeps the reservation across a
// restart); a failed write gives the reservation back.
func (n *remoteNode) reserveAndRecord(ctx context.Context, poolName string, want pool.Volume) error {
	c := n.c
	v, ok := c.Volume(want.ID)
	if ok && v.DeletionTimestamp != nil && v.Status.Phase != v1alpha1.VolumeReady {
		// A refused or abandoned earlier try whose object is still going.
		return fmt.Errorf("volume %s: the volume object of an earlier try is being removed: %w", want.ID, ErrInProgress)
	}
	if ok || c.reservedFor(want.ID) {
		if ok && (v.Spec.NodeName != n.name || v.Spec.Pool != poolName || v.Spec.CapacityBytes != want.CapacityBytes ||
			v.Spec.Mode != objectMode(want.Mode) || v.Spec.FsType != want.FsType || v.Spec.Thick != want.Thick ||
			!sameSource(v.Spec.Source, want.Source)) {
			return fmt.Errorf("volume %s: %w", want.ID, pool.ErrExists)
		}
		return nil // a retry: wait for the one in flight
	}
	obj := &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:       want.ID,
			Labels:     map[string]string{v1alpha1.LabelNode: n.name, v1alpha1.LabelPool: poolName},
			Finalizers: []string{v1alpha1.Finalizer},
		},
		Spec: v1alpha1.VolumeSpec{
			NodeName: n.name, Pool: poolName, VolumeName: want.Name, CapacityBytes: want.CapacityBytes,
			Mode: objectMode(want.Mode), FsType: want.FsType, Thick: want.Thick, Claim: want.Parameters[volume.ParamOwner],
			IOLimits: objectLimits(want.IOLimits),
		},
	}
	if src := want.Source; src != nil {
		obj.Spec.Source = &v1alpha1.VolumeSource{SnapshotID: src.SnapshotID, VolumeID: src.VolumeID, NodeName: src.Node}
	}
	if c.serialCreates { // the lock before issue 11, for the benchmark only: global, across the write
		c.serialMu.Lock()
		defer c.serialMu.Unlock()
	}
	giveBack, err := c.reserve(n.name, poolName, want.ID, want.CapacityBytes)
	if err != nil {
		return err
	}
	if err := c.createObject(ctx, obj); err != nil {
		giveBack()
		return fmt.Errorf("record volume %s: %w", want.ID, err)
	}
	return nil
}

func (n *remoteNode) DeleteVolume(ctx context.Context, id string) error {
	v, ok := n.c.Volume(id)
	if !ok {
		return nil
	}
	if n.c.nodeGone(v.Spec.NodeName) {
		return n.c.dropOnLostNode(ctx, v)
	}
	if v.DeletionTimestamp == nil {
		if err := n.c.deleteObject(ctx, id); err != nil {
			return fmt.Errorf("delete volume object %s: %w", id, err)
		}
	}
	return n.c.waitVolume(ctx, id, func(v *v1alpha1.PlinthVolume, ok bool) (bool, error) {
		if !ok {
			return true, nil
		}
		if v.Status.Reason == v1alpha1.ReasonInUse {
			return true, errorOf(v)
		}
		return false, nil
	})
}

// dropOnLostNode deletes the object of volume v, whose node has left the
// cluster, when the Lost policy allows it: the object gets its deletion
// timestamp and keeps its node's finalizer, a tombstone the node acts on
// (removing the storage) if it ever comes back. Otherwise the volume is
// reported (ErrNodeGone) and kept.
func (c *Cluster) dropOnLostNode(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	ok, err := c.Lost.Releasable(ctx, v.Spec.NodeName)
	if err != nil {
		return fmt.Errorf("volume %s on lost node %s: %w", v.Name, v.Spec.NodeName, err)
	}
	if !ok {
		return fmt.Errorf("%w: volume %s is on node %s, which has left the cluster; its storage cannot be removed from here and the volume object is kept",
			volume.ErrNodeGone, v.Name, v.Spec.NodeName)
	}
	if v.DeletionTimestamp == nil {
		if err := c.deleteObject(ctx, v.Name); err != nil {
			return fmt.Errorf("delete volume object %s on lost node %s: %w", v.Name, v.Spec.NodeName, err)
		}
	}
	klog.FromContext(ctx).Info("Let go of a volume on a lost node; its node removes the storage if it comes back",
		"volumeID", v.Name, "node", v.Spec.NodeName)
	return nil
}

func (n *remoteNode) ExpandVolume(ctx context.Context, id string, capacityBytes int64) (pool.Volume, error) {
	v, ok := n.c.Volume(id)
	if !ok {
		return pool.Volume{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
	}
	if v.Spec.CapacityBytes < capacityBytes {
		if err := n.c.growObject(ctx, id, capacityBytes); err != nil {
			return pool.Volume{}, fmt.Errorf("expand volume object %s: %w", id, err)
		}
	}
	var out pool.Volume
	err := n.c.waitVolume(ctx, id, func(v *v1alpha1.PlinthVolume, ok bool) (bool, error) {
		if !ok {
			return true, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
		}
		if v.Status.CapacityBytes >= capacityBytes {
			out = toVolume(v)
			return true, nil
		}
		if v.Status.ObservedGeneration >= v.Generation && v.Spec.CapacityBytes >= capacityBytes && v.Status.Reason != "" {
			return true, errorOf(v)
		}
		return false, nil
	})
	return out, err
}

// poolLimits and objectLimits convert IO limits (the same fields); zero
// limits are nil.
func poolLimits(l *v1alpha1.IOLimits) *pool.IOLimits {
	if l == nil || *l == (v1alpha1.IOLimits{}) {
		return nil
	}
	out := pool.IOLimits(*l)
	return &out
}

func objectLimits(l *pool.IOLimits) *v1alpha1.IOLimits {
	if l.IsZero() {
		return nil
	}
	out := v1alpha1.IOLimits(*l)
	return &out
}

// ModifyVolume writes m into the volume object's spec and waits until its
// node says it made it true (status.applied), or refused it at that
// generation (the status's reason).
func (n *remoteNode) ModifyVolume(ctx context.Context, id string, m pool.Mutable) (pool.Volume, error) {
	v, ok := n.c.Volume(id)
	if !ok || v.Spec.NodeName != n.name {
		return pool.Volume{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
	}
	if v.Status.Phase != v1alpha1.VolumeReady {
		return pool.Volume{}, fmt.Errorf("volume %s is %s: %w", id, v.Status.Phase, pool.ErrNotReady)
	}
	want := objectLimits(m.IOLimits)
	if v.Spec.Thick != m.Thick || !equality.Semantic.DeepEqual(v.Spec.IOLimits, want) {
		// A merge patch of the whole ioLimits object: null removes it.
		patch, err := json.Marshal(map[string]any{"spec": map[string]any{"thick": m.Thick, "ioLimits": want}})
		if err != nil {
			return pool.Volume{}, err
		}
		if _, err := n.c.client.Patch(ctx, id, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return pool.Volume{}, fmt.Errorf("modify volume object %s: %w", id, err)
		}
	}
	var out pool.Volume
	err := n.c.waitVolume(ctx, id, func(v *v1alpha1.PlinthVolume, ok bool) (bool, error) {
		if !ok {
			return true, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
		}
		if v.Status.ObservedGeneration < v.Generation || v.Spec.Thick != m.Thick || !equality.Semantic.DeepEqual(v.Spec.IOLimits, want) {
			return false, nil
		}
		refused := v.Status.Reason == v1alpha1.ReasonNoSpace || v.Status.Reason == v1alpha1.ReasonInvalid || v.Status.Reason == v1alpha1.ReasonUnsupported
		a := v.Status.Applied
		// No status.applied: a node older than it, which does not apply
		// it; the wait runs out (ErrInProgress) and the change is tried
		// again.
		if a != nil && a.Thick == m.Thick && equality.Semantic.DeepEqual(a.IOLimits, want) {
			out = toVolume(v)
			return true, nil
		}
		if refused {
			return true, errorOf(v)
		}
		return false, nil
	})
	return out, err
}

func (n *remoteNode) Volume(_ context.Context, id string) (pool.Volume, error) {
	v, ok := n.c.Volume(id)
	if !ok || v.Spec.NodeName != n.name {
		return pool.Volume{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
	}
	return toVolume(v), nil
}

func (n *remoteNode) Volumes(context.Context) ([]pool.Volume, error) {
	var out []pool.Volume
	for _, v := range n.c.nodeVolumes(n.name) {
		if v.Spec.NodeName == n.name {
			out = append(out, toVolume(v))
		}
	}
	return out, nil
}

// sameSource reports whether a volume object's source is the one asked for.
func sameSource(have *v1alpha1.VolumeSource, want *pool.Source) bool {
	if have == nil || want == nil {
		return have == nil && want == nil
	}
	return have.SnapshotID == want.SnapshotID && have.VolumeID == want.VolumeID && have.NodeName == want.Node
}

// isInProgress reports whether err is a wait that ran out (ErrInProgress).
func isInProgress(err error) bool { return errors.Is(err, ErrInProgress) }
