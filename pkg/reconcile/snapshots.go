package reconcile

import (
	"context"
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// reconcileSnapshot takes a Pending snapshot object's snapshot of its
// source volume (once: the pool answers a second take of the same ID with
// the snapshot already made) and removes a deleted one's.
func (r *Reconciler) reconcileSnapshot(ctx context.Context, id string) error {
	cached, err := r.snapshots.Get(id)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	s := cached.DeepCopy()
	if s.Spec.NodeName != r.NodeName {
		return nil // mislabelled: not ours to touch
	}
	logger := klog.FromContext(ctx).WithValues("snapshotID", s.Name, "volumeID", s.Spec.SourceVolumeID, "pool", s.Spec.Pool)
	if s.DeletionTimestamp != nil {
		return r.removeSnapshot(ctx, s)
	}
	switch s.Status.Phase {
	case v1alpha1.VolumeFailed:
		return nil // the controller removes it
	case v1alpha1.VolumeReady:
		if _, err := r.Local.Snapshot(ctx, s.Name); errors.Is(err, pool.ErrNotFound) {
			msg := "the snapshot's storage is missing from pool " + s.Spec.Pool
			if s.Status.Message != msg {
				r.snapshotEvent(s, v1.EventTypeWarning, "StorageMissing", msg)
				logger.Error(nil, "Snapshot storage missing")
				s.Status.Reason, s.Status.Message = v1alpha1.ReasonError, msg
				return r.writeSnapshotStatus(ctx, s)
			}
		}
		return nil
	}
	var made pool.Snapshot
	src, err := r.Local.Volume(ctx, s.Spec.SourceVolumeID)
	if err == nil && src.Pool != s.Spec.Pool {
		// The source volume is not in the pool the controller saw: take
		// nothing.
		err = fmt.Errorf("%w: volume %s is in pool %s, the snapshot object names pool %s", pool.ErrInvalid, src.ID, src.Pool, s.Spec.Pool)
	}
	if err == nil {
		made, err = r.Local.CreateSnapshot(ctx, pool.Snapshot{ID: s.Name, Name: s.Spec.SnapshotName, SourceVolumeID: s.Spec.SourceVolumeID})
	}
	if err == nil && made.Pool != s.Spec.Pool {
		// The source volume is not in the pool the controller saw: never
		// call a snapshot elsewhere this object's.
		err = fmt.Errorf("%w: snapshot %s was taken in pool %s, the object names pool %s", pool.ErrInvalid, s.Name, made.Pool, s.Spec.Pool)
	}
	if err != nil {
		if retryable(err) {
			return err
		}
		s.Status.Phase = v1alpha1.VolumeFailed
		s.Status.Reason, s.Status.Message = reasonOf(err), err.Error()
		if errors.Is(err, pool.ErrNotFound) {
			s.Status.Reason = v1alpha1.ReasonNotFound // the source volume
		}
		r.snapshotEvent(s, v1.EventTypeWarning, "SnapshotFailed", err.Error())
		logger.Info("Snapshot refused", "err", err)
		return r.writeSnapshotStatus(ctx, s)
	}
	if made.State != pool.StateReady {
		return fmt.Errorf("snapshot %s is not ready yet", s.Name)
	}
	// A copy (no reflink) takes the pool's space: its numbers go out first.
	if _, err := r.Status.PublishAfter(ctx, made.CreatedAt); err != nil {
		return err
	}
	at := metav1.NewTime(made.CreatedAt)
	s.Status = v1alpha1.SnapshotStatus{
		Phase: v1alpha1.VolumeReady, SizeBytes: made.SizeBytes, CreationTime: &at,
		Mode: objectMode(made.Mode), FsType: made.FsType,
	}
	logger.V(2).Info("Snapshot taken", "size", made.SizeBytes)
	return r.writeSnapshotStatus(ctx, s)
}

func (r *Reconciler) removeSnapshot(ctx context.Context, s *v1alpha1.PlinthSnapshot) error {
	if !hasFinalizer(s.ObjectMeta) {
		return nil
	}
	err := r.Local.DeleteSnapshot(ctx, s.Name)
	if errors.Is(err, pool.ErrNotFound) {
		err = nil
	}
	if err != nil {
		if !retryable(err) && s.Status.Message != err.Error() {
			r.snapshotEvent(s, v1.EventTypeWarning, "DeleteBlocked", err.Error())
			s.Status.Phase, s.Status.Reason, s.Status.Message = v1alpha1.VolumeDeleting, reasonOf(err), err.Error()
			if werr := r.writeSnapshotStatus(ctx, s); werr != nil {
				return werr
			}
		}
		return err
	}
	if err := r.Status.Publish(ctx, true); err != nil {
		klog.FromContext(ctx).Error(err, "Publishing node status after a snapshot delete")
	}
	_, err = r.Plinth.PlinthV1alpha1().PlinthSnapshots().Patch(ctx, s.Name, types.MergePatchType, dropFinalizer(s.ObjectMeta), metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		klog.FromContext(ctx).V(2).Info("Snapshot removed", "snapshotID", s.Name)
	}
	return err
}

func (r *Reconciler) writeSnapshotStatus(ctx context.Context, s *v1alpha1.PlinthSnapshot) error {
	_, err := r.Plinth.PlinthV1alpha1().PlinthSnapshots().UpdateStatus(ctx, s, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (r *Reconciler) snapshotEvent(s *v1alpha1.PlinthSnapshot, kind, reason, msg string) {
	if r.Events != nil {
		r.Events.Event(eventObject(v1alpha1.SnapshotKind, s.ObjectMeta), kind, reason, msg)
	}
}

// objectMode is a pool mode as the objects spell it (Filesystem, Block);
// an unknown one stays empty.
func objectMode(m pool.Mode) string {
	switch m {
	case pool.ModeBlock:
		return v1alpha1.ModeBlock
	case pool.ModeFilesystem:
		return v1alpha1.ModeFilesystem
	}
	return ""
}
