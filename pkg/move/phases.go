package move

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

var everything = labels.Everything()

// provisionerFinalizer is the one sig-storage-lib-external-provisioner
// puts on the PVs it provisions.
const provisionerFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"

// AnnotationHeldBy on a held PlinthVolume names the move (its UID) that
// holds it.
const AnnotationHeldBy = "plinth.example.com/held-by"

// inProgress reports whether err is a wait that ran out or a lock taken:
// the move looks again.
func inProgress(err error) bool {
	return errors.Is(err, volume.ErrInProgress) || errors.Is(err, volume.ErrLocked) || errors.Is(err, pool.ErrNotReady) ||
		errors.Is(err, pool.ErrDeleting) || errors.Is(err, context.DeadlineExceeded)
}

// copying takes the snapshot and fills the target volume from it. A whole
// disk has no snapshot: a blank disk volume is made on the target, and
// the whole source disk goes there in FinalSync, once nothing uses it.
func (c *Controller) copying(ctx context.Context, m *v1alpha1.PlinthMove) (time.Duration, error) {
	src, err := c.sourceVolume(ctx, m)
	if err != nil {
		return 0, err
	}
	backend, err := c.backendOf(ctx, src)
	if err != nil {
		return 0, err
	}
	if backend == "disk" {
		return c.placeBlankDisk(ctx, m, src)
	}
	if m.Status.SnapshotID == "" {
		snap, err := c.Volumes.CreateSnapshot(ctx, moveSnapshotName(m), src.Name)
		if inProgress(err) {
			return poll, nil
		}
		if err != nil {
			return 0, refuse(ReasonCopyFailed, "snapshot volume %s: %w", src.Name, err)
		}
		if snap.Snapshot.State != pool.StateReady {
			return poll, nil
		}
		m.Status.SnapshotID = snap.Snapshot.ID
		return poll, c.writeStatus(ctx, m)
	}
	if c.progress(ctx, m) {
		if err := c.writeStatus(ctx, m); err != nil {
			return 0, err
		}
	}
	params := volume.Params{Thick: src.Spec.Thick}
	if src.Spec.IOLimits != nil { // the claim's class goes with it
		l := pool.IOLimits(*src.Spec.IOLimits)
		params.IOLimits = &l
	}
	if pv, err := c.Core.CoreV1().PersistentVolumes().Get(ctx, m.Status.SourcePV, metav1.GetOptions{}); err == nil {
		if params.Pool, err = c.classPool(ctx, pv); err != nil {
			return 0, err
		}
	}
	placed, err := c.Volumes.CreateVolume(ctx, volume.CreateRequest{
		Name: m.Status.TargetPV, RequiredBytes: src.Spec.CapacityBytes, Mode: poolMode(src.Spec.Mode), FsType: src.Spec.FsType,
		Params: params, Requisite: []string{m.Spec.TargetNode},
		Source: &pool.Source{SnapshotID: m.Status.SnapshotID}, Owner: m.Namespace + "/" + m.Spec.Claim,
	})
	if inProgress(err) {
		return poll, nil
	}
	if err != nil {
		return 0, refuse(ReasonCopyFailed, "make the volume on node %s: %w", m.Spec.TargetNode, err)
	}
	if placed.Node != m.Spec.TargetNode || placed.Volume.ID != m.Status.TargetVolumeID {
		return 0, refuse(ReasonCopyFailed, "the target volume was made as %s on node %s", placed.Volume.ID, placed.Node)
	}
	now := metav1.Now()
	m.Status.Phase, m.Status.CutoverTime = v1alpha1.MoveCutover, &now
	m.Status.BytesDone = m.Status.BytesTotal
	m.Status.Message = "copied; the volume is held and the pods that use the claim stop"
	c.event(m, v1.EventTypeNormal, "MoveCopied", "copied to node %s; cutover: %s", m.Spec.TargetNode, cutoverHow(m))
	return poll, c.writeStatus(ctx, m)
}

// backendOf is the backend of the pool that holds volume object v, as
// its node publishes it.
func (c *Controller) backendOf(ctx context.Context, v *v1alpha1.PlinthVolume) (string, error) {
	n, err := c.Plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, v.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read PlinthNode %s: %w", v.Spec.NodeName, err)
	}
	for _, p := range n.Status.Pools {
		if p.Name == v.Spec.Pool {
			return p.Backend, nil
		}
	}
	return "", refuse(ReasonUnsupported, "node %s publishes no pool %s", v.Spec.NodeName, v.Spec.Pool)
}

// placeBlankDisk makes the target of a whole disk's move: a blank disk
// volume on the target node, in a disk pool (the StorageClass's pool when
// it names one), at least as large as the source disk.
func (c *Controller) placeBlankDisk(ctx context.Context, m *v1alpha1.PlinthMove, src *v1alpha1.PlinthVolume) (time.Duration, error) {
	params := volume.Params{Backend: "disk"}
	if pv, err := c.Core.CoreV1().PersistentVolumes().Get(ctx, m.Status.SourcePV, metav1.GetOptions{}); err == nil {
		if params.Pool, err = c.classPool(ctx, pv); err != nil {
			return 0, err
		}
	}
	placed, err := c.Volumes.CreateVolume(ctx, volume.CreateRequest{
		Name: m.Status.TargetPV, RequiredBytes: src.Spec.CapacityBytes, Mode: poolMode(src.Spec.Mode), FsType: src.Spec.FsType,
		Params: params, Requisite: []string{m.Spec.TargetNode}, Owner: m.Namespace + "/" + m.Spec.Claim,
	})
	if inProgress(err) {
		return poll, nil
	}
	if err != nil {
		return 0, refuse(ReasonCopyFailed, "make the disk volume on node %s: %w", m.Spec.TargetNode, err)
	}
	if placed.Node != m.Spec.TargetNode || placed.Volume.ID != m.Status.TargetVolumeID {
		return 0, refuse(ReasonCopyFailed, "the target volume was made as %s on node %s", placed.Volume.ID, placed.Node)
	}
	now := metav1.Now()
	m.Status.Phase, m.Status.CutoverTime = v1alpha1.MoveCutover, &now
	m.Status.Message = "a whole disk has no snapshot: it is copied once the pods that use the claim stop"
	c.event(m, v1.EventTypeNormal, "MoveCopied", "a disk on node %s takes the volume; cutover: %s", m.Spec.TargetNode, cutoverHow(m))
	return poll, c.writeStatus(ctx, m)
}

func cutoverHow(m *v1alpha1.PlinthMove) string {
	if m.Spec.Evict {
		return "the pods that use the claim are evicted"
	}
	return "waiting for the pods that use the claim to stop"
}

func poolMode(m string) pool.Mode {
	if m == v1alpha1.ModeBlock {
		return pool.ModeBlock
	}
	return pool.ModeFilesystem
}

// progress copies the target volume's transfer progress into the move;
// it reports whether anything changed.
func (c *Controller) progress(ctx context.Context, m *v1alpha1.PlinthMove) bool {
	t, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, m.Status.TargetVolumeID, metav1.GetOptions{})
	if err != nil || t.Status.Transfer == nil {
		return false
	}
	p := t.Status.Transfer
	eta := int64(0)
	if p.BytesPerSecond > 0 && p.TotalBytes > p.DoneBytes {
		eta = (p.TotalBytes - p.DoneBytes + p.BytesPerSecond - 1) / p.BytesPerSecond
	}
	changed := m.Status.BytesDone != p.DoneBytes || m.Status.BytesTotal != p.TotalBytes || m.Status.BytesPerSecond != p.BytesPerSecond || m.Status.ETASeconds != eta
	m.Status.BytesDone, m.Status.BytesTotal, m.Status.BytesPerSecond, m.Status.ETASeconds = p.DoneBytes, p.TotalBytes, p.BytesPerSecond, eta
	if p.Message != "" && !strings.Contains(m.Status.Message, p.Message) {
		m.Status.Message = "the transfer stopped and is tried again: " + p.Message
		changed = true
	}
	return changed
}

func (c *Controller) sourceVolume(ctx context.Context, m *v1alpha1.PlinthMove) (*v1alpha1.PlinthVolume, error) {
	src, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, m.Status.SourceVolumeID, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, refuse(ReasonNotFound, "the source volume %s is gone", m.Status.SourceVolumeID)
	}
	if err != nil {
		return nil, err
	}
	if src.DeletionTimestamp != nil || src.Status.Phase != v1alpha1.VolumeReady {
		return nil, refuse(ReasonNotFound, "the source volume %s is %s", src.Name, src.Status.Phase)
	}
	return src, nil
}

// cutover holds the source volume and stops the pods that use the claim.
func (c *Controller) cutover(ctx context.Context, m *v1alpha1.PlinthMove) (time.Duration, error) {
	src, err := c.sourceVolume(ctx, m)
	if err != nil {
		return 0, err
	}
	if by := src.Annotations[AnnotationHeldBy]; src.Spec.Held && by != string(m.UID) && !c.orphanedHold(src, m.Namespace) {
		return 0, refuse(ReasonInProgress, "volume %s is held by another move (%s)", src.Name, by)
	}
	if !src.Spec.Held || src.Annotations[AnnotationHeldBy] != string(m.UID) {
		if err := c.hold(ctx, src, string(m.UID), true); err != nil {
			return 0, err
		}
		return poll, nil
	}
	if src.Status.ObservedGeneration < src.Generation {
		return poll, nil // its node has not seen the hold yet
	}
	pods, err := c.podsUsing(ctx, m.Namespace, m.Spec.Claim)
	if err != nil {
		return 0, err
	}
	var running []string
	for _, p := range pods {
		if !mayUse(&p) {
			continue // not started: its volume is held, it waits
		}
		running = append(running, p.Name)
		if m.Spec.Evict && p.DeletionTimestamp == nil {
			err := c.Core.CoreV1().Pods(p.Namespace).EvictV1(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace}})
			switch {
			case apierrors.IsTooManyRequests(err):
				return c.waiting(ctx, m, fmt.Sprintf("the eviction of pod %s waits for its PodDisruptionBudget", p.Name))
			case err != nil && !apierrors.IsNotFound(err):
				return 0, fmt.Errorf("evict pod %s: %w", p.Name, err)
			case err == nil:
				c.event(m, v1.EventTypeNormal, "MoveEvicted", "evicted pod %s for the move to node %s", p.Name, m.Spec.TargetNode)
			}
		}
	}
	if len(running) > 0 {
		msg := "waiting for pods " + strings.Join(running, ", ") + " to stop"
		if !m.Spec.Evict {
			msg += " (or move with --evict)"
		}
		return c.waiting(ctx, m, msg)
	}
	m.Status.Phase, m.Status.Reason = v1alpha1.MoveFinalSync, ""
	m.Status.Message = "sending what changed since the snapshot"
	if m.Status.SnapshotID == "" {
		m.Status.Message = "sending the whole disk, which nothing uses now"
	}
	m.Status.BytesDone, m.Status.BytesPerSecond, m.Status.ETASeconds = 0, 0, 0
	return poll, c.writeStatus(ctx, m)
}

// mayUse reports whether pod p may have its volumes mounted: it runs, it
// is stopping, or one of its containers (init containers too) started.
// A pod that was only scheduled waits on the held volume and uses nothing.
func mayUse(p *v1.Pod) bool {
	if p.Status.Phase == v1.PodRunning || p.DeletionTimestamp != nil {
		return true
	}
	for _, st := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		if st.State.Running != nil || st.State.Terminated != nil || st.LastTerminationState.Terminated != nil {
			return true
		}
	}
	return false
}

// heldByMe reports whether this move holds volume object v.
func heldByMe(m *v1alpha1.PlinthMove, v *v1alpha1.PlinthVolume) bool {
	return v.Spec.Held && v.Annotations[AnnotationHeldBy] == string(m.UID)
}

// moveSnapshotName is the name of the snapshot move m copies; its ID
// follows from it (volume.SnapshotID), whatever status says.
func moveSnapshotName(m *v1alpha1.PlinthMove) string { return SnapshotPrefix + string(m.UID) }

// waiting says in the move's status what it waits for.
func (c *Controller) waiting(ctx context.Context, m *v1alpha1.PlinthMove, msg string) (time.Duration, error) {
	if m.Status.Message != msg {
		m.Status.Message = msg
		if err := c.writeStatus(ctx, m); err != nil {
			return 0, err
		}
	}
	return 2 * poll, nil
}

// hold sets or lifts the hold on volume object v.
func (c *Controller) hold(ctx context.Context, v *v1alpha1.PlinthVolume, by string, held bool) error {
	ann := map[string]any{AnnotationHeldBy: nil}
	if held {
		ann[AnnotationHeldBy] = by
	}
	patch, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": v.ResourceVersion, "annotations": ann},
		"spec":     map[string]any{"held": held},
	})
	_, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, v.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// podsUsing lists the pods of ns that name claim, not finished.
func (c *Controller) podsUsing(ctx context.Context, ns, claim string) ([]v1.Pod, error) {
	list, err := c.Core.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []v1.Pod
	for _, p := range list.Items {
		if p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
			continue
		}
		for _, vol := range p.Spec.Volumes {
			if vol.PersistentVolumeClaim != nil && vol.PersistentVolumeClaim.ClaimName == claim {
				out = append(out, p)
				break
			}
		}
	}
	return out, nil
}

// finalSync sends what changed since the snapshot to the target.
func (c *Controller) finalSync(ctx context.Context, m *v1alpha1.PlinthMove) (time.Duration, error) {
	src, err := c.sourceVolume(ctx, m)
	if err != nil {
		return 0, err
	}
	if !heldByMe(m, src) {
		// Someone lifted the hold: pods may have written since the sync.
		return 0, refuse(ReasonSyncFailed, "the hold on volume %s was lifted during the final sync: what was written since cannot be known", src.Name)
	}
	t, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, m.Status.TargetVolumeID, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return 0, refuse(ReasonSyncFailed, "the target volume %s is gone", m.Status.TargetVolumeID)
	}
	if err != nil {
		return 0, err
	}
	switch {
	case t.Status.SyncedVolumeID == m.Status.SourceVolumeID:
		now := metav1.Now()
		m.Status.Phase, m.Status.RebindTime = v1alpha1.MoveRebind, &now
		m.Status.Message = "binding the claim to the volume on node " + m.Spec.TargetNode
		return poll, c.writeStatus(ctx, m)
	case t.Status.Reason == v1alpha1.ReasonSyncFailed:
		return 0, refuse(ReasonSyncFailed, "node %s could not bring the volume up to date: %s", m.Spec.TargetNode, t.Status.Message)
	case t.Spec.Sync == nil:
		patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"sync": v1alpha1.VolumeSync{
			NodeName: m.Status.SourceNode, VolumeID: m.Status.SourceVolumeID, BaseSnapshotID: m.Status.SnapshotID}}})
		_, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, t.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		return poll, err
	}
	if p := t.Status.Transfer; p != nil && p.Message != "" && m.Status.Message != "the final sync waits: "+p.Message {
		m.Status.Message = "the final sync waits: " + p.Message
		return poll, c.writeStatus(ctx, m)
	}
	if c.progress(ctx, m) {
		return poll, c.writeStatus(ctx, m)
	}
	return poll, nil
}

// rollback undoes a move before its rebind: the hold lifted, the target
// volume and the snapshot removed; then the move is Failed with why.
func (c *Controller) rollback(ctx context.Context, m *v1alpha1.PlinthMove, reason string, why error) (time.Duration, error) {
	logger := klog.FromContext(ctx)
	if m.Status.Phase != v1alpha1.MoveFailed {
		logger.Info("Move rolls back", "reason", reason, "err", why)
		m.Status.Phase, m.Status.Reason, m.Status.Message = v1alpha1.MoveFailed, reason, "rolled back: "+why.Error()
		c.event(m, v1.EventTypeWarning, "MoveFailed", "%s; the claim stays on node %s", m.Status.Message, m.Status.SourceNode)
		if err := c.writeStatus(ctx, m); err != nil {
			return 0, err
		}
	}
	if m.Status.SourceVolumeID != "" {
		src, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, m.Status.SourceVolumeID, metav1.GetOptions{})
		if err == nil && src.Spec.Held && src.Annotations[AnnotationHeldBy] == string(m.UID) {
			if err := c.hold(ctx, src, "", false); err != nil {
				return 0, err
			}
		} else if err != nil && !apierrors.IsNotFound(err) {
			return 0, err
		}
	}
	// Only what the move made, by the names it derives from its own UID
	// (status may say anything).
	if m.Status.SourcePV != "" {
		target := volume.VolumeID(targetPVName(m.Status.SourcePV, m.UID))
		if err := c.Volumes.DeleteVolume(ctx, target); err != nil {
			if inProgress(err) {
				return poll, nil
			}
			return 0, fmt.Errorf("remove the target volume %s: %w", target, err)
		}
	}
	snap := volume.SnapshotID(moveSnapshotName(m))
	if err := c.Volumes.DeleteSnapshot(ctx, snap); err != nil {
		if inProgress(err) {
			return poll, nil
		}
		return 0, fmt.Errorf("remove the snapshot %s: %w", snap, err)
	}
	if m.DeletionTimestamp == nil && slices.Contains(m.Finalizers, Finalizer) {
		return 0, c.dropFinalizer(ctx, m)
	}
	return 0, nil
}

// rebind binds the claim to a PV of the target volume.
func (c *Controller) rebind(ctx context.Context, m *v1alpha1.PlinthMove) (time.Duration, error) {
	pvs := c.Core.CoreV1().PersistentVolumes()
	old, err := pvs.Get(ctx, m.Status.SourcePV, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, err
	}
	// 1. The source PV outlives its claim until Done.
	if err == nil && old.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimRetain {
		if m.Status.SourceReclaimPolicy == "" {
			m.Status.SourceReclaimPolicy = string(old.Spec.PersistentVolumeReclaimPolicy)
			if err := c.writeStatus(ctx, m); err != nil {
				return 0, err
			}
		}
		patch := []byte(`{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}`)
		if _, err := pvs.Patch(ctx, old.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return 0, fmt.Errorf("retain PV %s: %w", old.Name, err)
		}
		return poll, nil
	}
	// 2. A PV of the target volume, pre-bound to the claim's name.
	if _, err := pvs.Get(ctx, m.Status.TargetPV, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if old == nil {
			return 0, fmt.Errorf("the source PV %s is gone before the target's PV was made", m.Status.SourcePV)
		}
		pv, err := c.targetPV(ctx, m, old)
		if err != nil {
			return 0, err
		}
		if _, err := pvs.Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return 0, fmt.Errorf("make PV %s: %w", pv.Name, err)
		}
		return poll, nil
	} else if err != nil {
		return 0, err
	}
	// 3. The claim goes (with the pods that wait for it on the old node),
	// then comes back bound to the new PV.
	claims := c.Core.CoreV1().PersistentVolumeClaims(m.Namespace)
	pvc, err := claims.Get(ctx, m.Spec.Claim, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		var saved savedClaim
		if err := json.Unmarshal([]byte(m.Status.Claim), &saved); err != nil {
			return 0, fmt.Errorf("the claim the move saved: %w", err)
		}
		spec := saved.Spec
		spec.VolumeName = m.Status.TargetPV
		anns := map[string]string{}
		for k, v := range saved.Annotations {
			if !bindAnnotation(k) {
				anns[k] = v
			}
		}
		pvc = &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: m.Spec.Claim, Namespace: m.Namespace, Labels: saved.Labels,
			Annotations: anns, OwnerReferences: saved.OwnerReferences}, Spec: spec}
		if _, err := claims.Create(ctx, pvc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return 0, fmt.Errorf("make claim %s/%s again: %w", m.Namespace, m.Spec.Claim, err)
		}
		return poll, nil
	case err != nil:
		return 0, err
	case string(pvc.UID) == m.Status.ClaimUID:
		// The source stays held until it is gone.
		if src, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, m.Status.SourceVolumeID, metav1.GetOptions{}); err == nil && !heldByMe(m, src) {
			klog.FromContext(ctx).Info("The source's hold was lifted during the rebind; holding it again", "volumeID", src.Name)
			return poll, c.hold(ctx, src, string(m.UID), true)
		}
		// The claim is made again as it is now (labels, annotations, a
		// resize asked since the move began), not as it was at the start.
		if saved, err := saveClaim(pvc); err == nil && saved != m.Status.Claim && pvc.DeletionTimestamp == nil {
			m.Status.Claim = saved
			return poll, c.writeStatus(ctx, m)
		}
		pods, err := c.podsUsing(ctx, m.Namespace, m.Spec.Claim)
		if err != nil {
			return 0, err
		}
		for _, p := range pods {
			if p.DeletionTimestamp == nil {
				if err := c.Core.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					return 0, fmt.Errorf("delete pod %s, which waits for the claim on the old node: %w", p.Name, err)
				}
			}
		}
		if pvc.DeletionTimestamp == nil {
			uid := pvc.UID
			if err := claims.Delete(ctx, pvc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
				return 0, fmt.Errorf("delete claim %s/%s to bind it again: %w", m.Namespace, pvc.Name, err)
			}
		}
		return poll, nil
	case pvc.Status.Phase == v1.ClaimBound && pvc.Spec.VolumeName == m.Status.TargetPV:
		if err := c.dropStrandedPods(ctx, m); err != nil {
			return 0, err
		}
		now := metav1.Now()
		m.Status.Phase, m.Status.DoneTime, m.Status.Reason = v1alpha1.MoveDone, nil, ""
		m.Status.ClaimUID = string(pvc.UID)
		m.Status.Message = fmt.Sprintf("the claim is bound on node %s", m.Spec.TargetNode)
		if m.Spec.KeepSourceFor != nil && m.Spec.KeepSourceFor.Duration > 0 {
			m.Status.Message += fmt.Sprintf("; the source on %s is kept until %s", m.Status.SourceNode, now.Add(m.Spec.KeepSourceFor.Duration).UTC().Format(time.RFC3339))
		}
		m.Status.RebindTime = &now
		c.event(m, v1.EventTypeNormal, "Moved", "claim bound to PV %s on node %s", m.Status.TargetPV, m.Spec.TargetNode)
		return poll, c.writeStatus(ctx, m)
	case pvc.Spec.VolumeName != "" && pvc.Spec.VolumeName != m.Status.TargetPV:
		return c.waiting(ctx, m, fmt.Sprintf("claim %s/%s was made again by someone else, bound to PV %s: the move's PV %s stays for it", m.Namespace, pvc.Name, pvc.Spec.VolumeName, m.Status.TargetPV))
	}
	return poll, nil // made again (by the move or the workload's controller); the PV controller binds it
}

// dropStrandedPods deletes the pods that use the claim, bound since to the
// target's PV, but were scheduled to another node and started nothing: a
// pod the workload's controller made again while the claim was being made
// again can be placed by what the old claim said (the source's node),
// where its volume never comes. Its controller makes it again, and the
// scheduler places it by the claim as it is now.
func (c *Controller) dropStrandedPods(ctx context.Context, m *v1alpha1.PlinthMove) error {
	pods, err := c.podsUsing(ctx, m.Namespace, m.Spec.Claim)
	if err != nil {
		return err
	}
	for _, p := range pods {
		if p.Spec.NodeName == "" || p.Spec.NodeName == m.Spec.TargetNode || p.DeletionTimestamp != nil || mayUse(&p) {
			continue
		}
		klog.FromContext(ctx).Info("Deleting a pod placed on another node than its claim's volume", "pod", p.Name, "node", p.Spec.NodeName)
		if err := c.Core.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete pod %s, placed on node %s, away from its claim's volume: %w", p.Name, p.Spec.NodeName, err)
		}
	}
	return nil
}

// bindAnnotation reports whether a claim annotation records a binding of
// the claim as it was (dropped when it is made again).
func bindAnnotation(k string) bool {
	switch k {
	case "pv.kubernetes.io/bind-completed", "pv.kubernetes.io/bound-by-controller", "volume.kubernetes.io/selected-node",
		"volume.beta.kubernetes.io/storage-provisioner", "volume.kubernetes.io/storage-provisioner":
		return true
	}
	return false
}

// targetPV is the source PV made for the target volume: its handle, node
// and capacity, pre-bound to the claim's namespace and name.
func (c *Controller) targetPV(ctx context.Context, m *v1alpha1.PlinthMove, old *v1.PersistentVolume) (*v1.PersistentVolume, error) {
	t, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, m.Status.TargetVolumeID, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read the target volume %s: %w", m.Status.TargetVolumeID, err)
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: m.Status.TargetPV, Labels: old.Labels, Annotations: map[string]string{}},
		Spec:       *old.Spec.DeepCopy(),
	}
	for k, v := range old.Annotations {
		if k != "pv.kubernetes.io/bound-by-controller" {
			pv.Annotations[k] = v
		}
	}
	pv.Annotations["plinth.example.com/moved-from"] = old.Name
	pv.Spec.ClaimRef = &v1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: m.Namespace, Name: m.Spec.Claim}
	if p := m.Status.SourceReclaimPolicy; p != "" {
		pv.Spec.PersistentVolumeReclaimPolicy = v1.PersistentVolumeReclaimPolicy(p)
	}
	csi := pv.Spec.CSI
	csi.VolumeHandle = t.Name
	attrs := map[string]string{}
	for k, v := range csi.VolumeAttributes {
		attrs[k] = v
	}
	for k := range attrs {
		if strings.HasSuffix(k, "/node") {
			attrs[k] = m.Spec.TargetNode
		}
	}
	if _, ok := attrs[v1alpha1.LabelPool]; ok {
		attrs[v1alpha1.LabelPool] = t.Spec.Pool
	}
	csi.VolumeAttributes = attrs
	pv.Spec.Capacity = v1.ResourceList{v1.ResourceStorage: *resourceBytes(t.Status.CapacityBytes)}
	pv.Spec.NodeAffinity = &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
		MatchExpressions: []v1.NodeSelectorRequirement{{Key: c.TopologyKey, Operator: v1.NodeSelectorOpIn, Values: []string{m.Spec.TargetNode}}},
	}}}}
	return pv, nil
}

// done removes the source once the claim is bound on the target and
// spec.keepSourceFor has passed.
func (c *Controller) done(ctx context.Context, m *v1alpha1.PlinthMove) (time.Duration, error) {
	if m.Status.DoneTime != nil {
		return 0, nil
	}
	if err := c.dropStrandedPods(ctx, m); err != nil {
		return 0, err
	}
	if k := m.Spec.KeepSourceFor; k != nil && m.Status.RebindTime != nil {
		if left := time.Until(m.Status.RebindTime.Add(k.Duration)); left > 0 && m.DeletionTimestamp == nil {
			return left, nil
		}
	}
	pvs := c.Core.CoreV1().PersistentVolumes()
	old, err := pvs.Get(ctx, m.Status.SourcePV, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, err
	}
	if err == nil && old.Status.Phase == v1.VolumeBound {
		return poll, nil // the old claim is not gone yet
	}
	if old != nil {
		if old.Spec.CSI == nil || old.Spec.CSI.VolumeHandle != m.Status.SourceVolumeID || old.Spec.ClaimRef == nil ||
			old.Spec.ClaimRef.Namespace != m.Namespace || old.Spec.ClaimRef.Name != m.Spec.Claim {
			return c.waiting(ctx, m, fmt.Sprintf("PV %s is not the claim's former PV of volume %s: it is left alone", old.Name, m.Status.SourceVolumeID))
		}
	}
	if src, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, m.Status.SourceVolumeID, metav1.GetOptions{}); err == nil {
		if src.Spec.Claim != "" && src.Spec.Claim != m.Namespace+"/"+m.Spec.Claim || src.Spec.NodeName != m.Status.SourceNode || src.Name == m.Status.TargetVolumeID {
			return c.waiting(ctx, m, fmt.Sprintf("volume %s is not the claim's former volume: it is left alone", src.Name))
		}
	}
	// The storage first (its node refuses while the volume is staged or
	// published there), then the PV object, which the move set to Retain.
	if err := c.Volumes.DeleteVolume(ctx, m.Status.SourceVolumeID); err != nil {
		if inProgress(err) || errors.Is(err, pool.ErrInUse) {
			return c.waiting(ctx, m, "removing the source volume: "+err.Error())
		}
		return 0, fmt.Errorf("remove the source volume %s: %w", m.Status.SourceVolumeID, err)
	}
	if old != nil {
		if err := pvs.Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return 0, fmt.Errorf("delete the source PV %s: %w", old.Name, err)
		}
		// The provisioner's finalizer is dropped on PVs it deletes; this
		// one the move deletes, its storage already removed.
		if fins := slices.DeleteFunc(slices.Clone(old.Finalizers), func(f string) bool { return f == provisionerFinalizer }); len(fins) != len(old.Finalizers) {
			patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": fins}})
			if _, err := pvs.Patch(ctx, old.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return 0, fmt.Errorf("let go of the source PV %s: %w", old.Name, err)
			}
		}
	}
	snap := volume.SnapshotID(moveSnapshotName(m))
	if err := c.Volumes.DeleteSnapshot(ctx, snap); err != nil {
		if inProgress(err) {
			return poll, nil
		}
		return 0, fmt.Errorf("remove the snapshot %s: %w", snap, err)
	}
	now := metav1.Now()
	m.Status.DoneTime = &now
	m.Status.Message = fmt.Sprintf("the claim is bound on node %s; the source on %s is removed", m.Spec.TargetNode, m.Status.SourceNode)
	if err := c.writeStatus(ctx, m); err != nil {
		return 0, err
	}
	return 0, c.dropFinalizer(ctx, m)
}

func resourceBytes(n int64) *resource.Quantity { return resource.NewQuantity(n, resource.BinarySI) }
