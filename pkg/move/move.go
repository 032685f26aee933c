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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/pkg/generated/informers/externalversions"
	listers "github.com/plinth-dev/plinth/pkg/generated/listers/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// Finalizer keeps a PlinthMove until what it made is cleaned up.
const Finalizer = "plinth.example.com/move"

// SnapshotPrefix names the snapshots moves take (volume.Controller leaves
// them out of ListSnapshots).
const SnapshotPrefix = volume.MoveSnapshotPrefix

// Controller runs PlinthMoves.
type Controller struct {
	Core    kubernetes.Interface
	Plinth  versioned.Interface
	Volumes *volume.Controller
	// Driver is plinth's CSI driver name; TopologyKey its node label.
	Driver      string
	TopologyKey string
	Events      record.EventRecorder
	// Workers run moves in parallel (default 4).
	Workers int

	moves listers.PlinthMoveLister
	queue workqueue.TypedRateLimitingInterface[string]
}

// Run runs moves until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("move")
	ctx = klog.NewContext(ctx, logger)
	if c.Workers <= 0 {
		c.Workers = 4
	}
	factory := externalversions.NewSharedInformerFactory(c.Plinth, 10*time.Minute)
	inf := factory.Plinth().V1alpha1().PlinthMoves()
	c.moves = inf.Lister()
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "plinth-moves"})
	defer c.queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil
	}
	logger.Info("Running volume moves")
	for range c.Workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for c.next(ctx) {
			}
		}, time.Second)
	}
	<-ctx.Done()
	return nil
}

func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	after, err := c.sync(ctx, key)
	switch {
	case err != nil:
		klog.FromContext(ctx).V(2).Info("Move not settled, retrying", "move", key, "err", err)
		c.queue.AddRateLimited(key)
	case after > 0:
		c.queue.Forget(key)
		c.queue.AddAfter(key, after)
	default:
		c.queue.Forget(key)
	}
	return true
}

// poll is how often a move looks again while it waits for something
// outside it (a copy, pods stopping, a bind).
const poll = time.Second

// refusal is a reason a move is refused or rolled back, and why.
type refusal struct {
	reason string
	err    error
}

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

func refuse(reason, format string, args ...any) error {
	return &refusal{reason: reason, err: fmt.Errorf(format, args...)}
}

// Reasons a move gives.
const (
	ReasonNotFound    = "NotFound"
	ReasonNotBound    = "NotBound"
	ReasonUnsupported = "Unsupported"
	ReasonNotPlinth   = "NotPlinth"
	ReasonNoNode      = "NoSuchNode"
	ReasonSameNode    = "SameNode"
	ReasonNoPool      = "NoPool"
	ReasonInProgress  = "MoveInProgress"
	ReasonCopyFailed  = "CopyFailed"
	ReasonSyncFailed  = "SyncFailed"
	ReasonCancelled   = "Cancelled"
	ReasonWaiting     = "Waiting"
)

func (c *Controller) sync(ctx context.Context, key string) (time.Duration, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, nil
	}
	cached, err := c.moves.PlinthMoves(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	m := cached.DeepCopy()
	logger := klog.FromContext(ctx).WithValues("move", key, "claim", m.Spec.Claim, "to", m.Spec.TargetNode, "phase", m.Status.Phase)
	ctx = klog.NewContext(ctx, logger)
	if m.DeletionTimestamp != nil {
		return c.deleted(ctx, m)
	}
	switch m.Status.Phase {
	case "", v1alpha1.MovePending:
		return c.start(ctx, m)
	case v1alpha1.MoveCopying:
		return c.rollbackOn(ctx, m, c.copying)
	case v1alpha1.MoveCutover:
		return c.rollbackOn(ctx, m, c.cutover)
	case v1alpha1.MoveFinalSync:
		return c.rollbackOn(ctx, m, c.finalSync)
	case v1alpha1.MoveRebind:
		return c.rebind(ctx, m)
	case v1alpha1.MoveDone:
		return c.done(ctx, m)
	case v1alpha1.MoveFailed:
		if slices.Contains(m.Finalizers, Finalizer) {
			return c.rollback(ctx, m, m.Status.Reason, errors.New(strings.TrimPrefix(m.Status.Message, "rolled back: ")))
		}
	}
	return 0, nil
}

// rollbackOn runs a phase before Rebind; a refusal rolls the move back.
func (c *Controller) rollbackOn(ctx context.Context, m *v1alpha1.PlinthMove, phase func(context.Context, *v1alpha1.PlinthMove) (time.Duration, error)) (time.Duration, error) {
	after, err := phase(ctx, m)
	var r *refusal
	if errors.As(err, &r) {
		return c.rollback(ctx, m, r.reason, r.err)
	}
	return after, err
}

// deleted: a move deleted before Rebind rolls back; from Rebind on it
// finishes first (the claim is being rebound), then lets go.
func (c *Controller) deleted(ctx context.Context, m *v1alpha1.PlinthMove) (time.Duration, error) {
	if !slices.Contains(m.Finalizers, Finalizer) {
		return 0, nil
	}
	switch m.Status.Phase {
	case v1alpha1.MoveRebind:
		return c.rebind(ctx, m)
	case v1alpha1.MoveDone:
		if m.Status.DoneTime == nil {
			return c.done(ctx, m)
		}
	case "", v1alpha1.MovePending:
	default:
		// Copying, Cutover, FinalSync, or a Failed move whose rollback
		// has not finished: finish it before letting go.
		reason, why := ReasonCancelled, errors.New("the move was deleted before its rebind")
		if m.Status.Phase == v1alpha1.MoveFailed {
			reason, why = m.Status.Reason, errors.New(strings.TrimPrefix(m.Status.Message, "rolled back: "))
		}
		after, err := c.rollback(ctx, m, reason, why)
		if err != nil || after > 0 {
			return after, err
		}
	}
	return 0, c.dropFinalizer(ctx, m)
}

func (c *Controller) dropFinalizer(ctx context.Context, m *v1alpha1.PlinthMove) error {
	fins := slices.DeleteFunc(slices.Clone(m.Finalizers), func(f string) bool { return f == Finalizer })
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": fins, "resourceVersion": m.ResourceVersion}})
	_, err := c.Plinth.PlinthV1alpha1().PlinthMoves(m.Namespace).Patch(ctx, m.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (c *Controller) writeStatus(ctx context.Context, m *v1alpha1.PlinthMove) error {
	out, err := c.Plinth.PlinthV1alpha1().PlinthMoves(m.Namespace).UpdateStatus(ctx, m, metav1.UpdateOptions{})
	if err == nil {
		*m = *out
	}
	return err
}

// claimRef is the claim as an event's object.
func claimRef(m *v1alpha1.PlinthMove) *v1.ObjectReference {
	return &v1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: m.Namespace, Name: m.Spec.Claim, UID: types.UID(m.Status.ClaimUID)}
}

func moveRef(m *v1alpha1.PlinthMove) *v1.ObjectReference {
	return &v1.ObjectReference{Kind: v1alpha1.MoveKind, APIVersion: v1alpha1.SchemeGroupVersion.String(), Namespace: m.Namespace, Name: m.Name, UID: m.UID}
}

func (c *Controller) event(m *v1alpha1.PlinthMove, kind, reason, format string, args ...any) {
	if c.Events == nil {
		return
	}
	c.Events.Eventf(claimRef(m), kind, reason, format, args...)
	c.Events.Eventf(moveRef(m), kind, reason, format, args...)
}

// start checks the move and begins it, or refuses it with nothing changed.
func (c *Controller) start(ctx context.Context, m *v1alpha1.PlinthMove) (time.Duration, error) {
	if err := c.check(ctx, m); err != nil {
		var r *refusal
		if !errors.As(err, &r) {
			return 0, err
		}
		m.Status.Phase, m.Status.Reason, m.Status.Message = v1alpha1.MoveFailed, r.reason, "refused: "+r.err.Error()
		c.event(m, v1.EventTypeWarning, "MoveRefused", "%s", m.Status.Message)
		klog.FromContext(ctx).Info("Move refused", "reason", r.reason, "err", r.err)
		return 0, c.writeStatus(ctx, m)
	}
	if !slices.Contains(m.Finalizers, Finalizer) {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": append(slices.Clone(m.Finalizers), Finalizer), "resourceVersion": m.ResourceVersion}})
		out, err := c.Plinth.PlinthV1alpha1().PlinthMoves(m.Namespace).Patch(ctx, m.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			return 0, err
		}
		m.ObjectMeta = out.ObjectMeta
	}
	now := metav1.Now()
	m.Status.Phase, m.Status.StartTime, m.Status.Reason = v1alpha1.MoveCopying, &now, ""
	m.Status.Message = fmt.Sprintf("copying a snapshot of volume %s from %s to %s while the workload runs", m.Status.SourceVolumeID, m.Status.SourceNode, m.Spec.TargetNode)
	m.Status.TargetPV = targetPVName(m.Status.SourcePV, m.UID)
	m.Status.TargetVolumeID = volume.VolumeID(m.Status.TargetPV)
	c.event(m, v1.EventTypeNormal, "MoveStarted", "moving to node %s: %s", m.Spec.TargetNode, m.Status.Message)
	return poll, c.writeStatus(ctx, m)
}

// targetPVName names the target's PV: the source's, with the move's mark.
func targetPVName(sourcePV string, uid types.UID) string {
	name := sourcePV
	if len(name) > 200 {
		name = name[:200]
	}
	return name + "-m" + strings.ReplaceAll(string(uid), "-", "")[:10]
}

// check refuses what cannot be moved; it fills in the source.
func (c *Controller) check(ctx context.Context, m *v1alpha1.PlinthMove) error {
	pvc, err := c.Core.CoreV1().PersistentVolumeClaims(m.Namespace).Get(ctx, m.Spec.Claim, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return refuse(ReasonNotFound, "claim %s/%s does not exist", m.Namespace, m.Spec.Claim)
	}
	if err != nil {
		return err
	}
	if pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" {
		return refuse(ReasonNotBound, "claim %s/%s is %s, not bound", m.Namespace, m.Spec.Claim, pvc.Status.Phase)
	}
	if pvc.DeletionTimestamp != nil {
		return refuse(ReasonNotBound, "claim %s/%s is being deleted", m.Namespace, m.Spec.Claim)
	}
	for _, o := range pvc.OwnerReferences {
		if o.Kind == "Pod" && o.APIVersion == "v1" {
			return refuse(ReasonUnsupported, "claim %s/%s is a pod's ephemeral volume (owned by pod %s): it lives and dies with the pod", m.Namespace, m.Spec.Claim, o.Name)
		}
	}
	for _, mode := range pvc.Spec.AccessModes {
		if mode == v1.ReadWriteMany || mode == v1.ReadOnlyMany {
			return refuse(ReasonUnsupported, "claim %s/%s is %s: a volume that pods on several nodes share cannot move to one node", m.Namespace, m.Spec.Claim, mode)
		}
	}
	pv, err := c.Core.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read PV %s: %w", pvc.Spec.VolumeName, err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.Driver {
		return refuse(ReasonNotPlinth, "claim %s/%s is bound to PV %s, which is not a volume of driver %s", m.Namespace, m.Spec.Claim, pv.Name, c.Driver)
	}
	if r := pv.Spec.ClaimRef; r == nil || r.UID != pvc.UID {
		return refuse(ReasonNotBound, "PV %s is not bound to claim %s/%s", pv.Name, m.Namespace, m.Spec.Claim)
	}
	src, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, pv.Spec.CSI.VolumeHandle, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return refuse(ReasonNotPlinth, "PV %s names volume %s, which plinth does not know", pv.Name, pv.Spec.CSI.VolumeHandle)
	}
	if err != nil {
		return err
	}
	if src.Status.Phase != v1alpha1.VolumeReady || src.DeletionTimestamp != nil {
		return refuse(ReasonNotBound, "volume %s is %s", src.Name, src.Status.Phase)
	}
	if src.Spec.Claim != "" && src.Spec.Claim != m.Namespace+"/"+m.Spec.Claim {
		return refuse(ReasonNotPlinth, "volume %s was made for claim %s, not %s/%s", src.Name, src.Spec.Claim, m.Namespace, m.Spec.Claim)
	}
	if src.Spec.Held && !c.orphanedHold(src, m.Namespace) {
		return refuse(ReasonInProgress, "volume %s is held by another move (%s)", src.Name, src.Annotations[AnnotationHeldBy])
	}
	if src.Spec.NodeName == m.Spec.TargetNode {
		return refuse(ReasonSameNode, "claim %s/%s is on node %s already", m.Namespace, m.Spec.Claim, m.Spec.TargetNode)
	}
	node, err := c.Core.CoreV1().Nodes().Get(ctx, m.Spec.TargetNode, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return refuse(ReasonNoNode, "node %s does not exist", m.Spec.TargetNode)
	}
	if err != nil {
		return err
	}
	if node.Spec.Unschedulable {
		return refuse(ReasonNoNode, "node %s is cordoned: the claim's pods could not run there", m.Spec.TargetNode)
	}
	if !NodeReady(node) {
		return refuse(ReasonNoNode, "node %s is not Ready", m.Spec.TargetNode)
	}
	moves, err := c.moves.PlinthMoves(m.Namespace).List(everything)
	if err != nil {
		return err
	}
	for _, o := range moves {
		if o.Name != m.Name && o.Spec.Claim == m.Spec.Claim && active(o.Status.Phase) {
			return refuse(ReasonInProgress, "move %s of claim %s/%s is running (%s)", o.Name, m.Namespace, m.Spec.Claim, o.Status.Phase)
		}
	}
	// Both ends: file pools, and the target has one that fits.
	srcNode, err := c.Plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, src.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read PlinthNode %s: %w", src.Spec.NodeName, err)
	}
	backend := ""
	for _, p := range srcNode.Status.Pools {
		if p.Name == src.Spec.Pool {
			backend = p.Backend
		}
	}
	if !volume.Movable(backend) {
		return refuse(ReasonUnsupported, "volume %s is in pool %s (%s) on node %s: plinth moves volumes of file, btrfs and disk pools only", src.Name, src.Spec.Pool, backend, src.Spec.NodeName)
	}
	if srcNode.Status.Transfer == nil {
		return refuse(ReasonUnsupported, "node %s serves no transfers (its plinth is older, or --transfer-address is empty)", src.Spec.NodeName)
	}
	tgt, err := c.Plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, m.Spec.TargetNode, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return refuse(ReasonNoPool, "node %s runs no plinth", m.Spec.TargetNode)
	}
	if err != nil {
		return err
	}
	if tgt.Status.Transfer == nil {
		return refuse(ReasonUnsupported, "node %s serves no transfers (its plinth is older, or --transfer-address is empty)", m.Spec.TargetNode)
	}
	pools := tgt.Status.Pools
	poolParam, err := c.classPool(ctx, pv)
	if err != nil {
		return err
	}
	if poolParam != "" {
		// The claim's StorageClass names a pool: the volume goes to the
		// target's pool of that name, and nowhere else.
		pools = slices.DeleteFunc(slices.Clone(pools), func(p v1alpha1.PoolStatus) bool { return p.Name != poolParam })
		if len(pools) == 0 {
			return refuse(ReasonNoPool, "node %s has no pool %s, which StorageClass %s names", m.Spec.TargetNode, poolParam, pv.Spec.StorageClassName)
		}
	}
	if why := Fits(pools, backend, src.Spec.Mode, src.Spec.FsType, src.Spec.CapacityBytes); why != "" {
		return refuse(ReasonNoPool, "node %s has no pool for volume %s: %s", m.Spec.TargetNode, src.Name, why)
	}
	claim, err := saveClaim(pvc)
	if err != nil {
		return err
	}
	m.Status.SourceNode, m.Status.SourcePV, m.Status.SourceVolumeID = src.Spec.NodeName, pv.Name, src.Name
	m.Status.ClaimUID, m.Status.Claim = string(pvc.UID), string(claim)
	m.Status.BytesTotal = src.Spec.CapacityBytes
	return nil
}

// savedClaim is what a move keeps of the claim, to make it again.
type savedClaim struct {
	Labels          map[string]string            `json:"labels,omitempty"`
	Annotations     map[string]string            `json:"annotations,omitempty"`
	OwnerReferences []metav1.OwnerReference      `json:"ownerReferences,omitempty"`
	Spec            v1.PersistentVolumeClaimSpec `json:"spec"`
}

// saveClaim is the claim as a move keeps it.
func saveClaim(pvc *v1.PersistentVolumeClaim) (string, error) {
	b, err := json.Marshal(savedClaim{Labels: pvc.Labels, Annotations: pvc.Annotations, OwnerReferences: pvc.OwnerReferences, Spec: pvc.Spec})
	return string(b), err
}

// classPool is the pool the PV's StorageClass names ("" for none, or no
// class).
func (c *Controller) classPool(ctx context.Context, pv *v1.PersistentVolume) (string, error) {
	if pv.Spec.StorageClassName == "" {
		return "", nil
	}
	sc, err := c.Core.StorageV1().StorageClasses().Get(ctx, pv.Spec.StorageClassName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return sc.Parameters[volume.ParamPool], nil
}

// orphanedHold reports whether v's hold names a move that no longer exists
// in ns (its finalizer was taken off by hand): a new move may take it.
func (c *Controller) orphanedHold(v *v1alpha1.PlinthVolume, ns string) bool {
	by := v.Annotations[AnnotationHeldBy]
	if by == "" {
		return false
	}
	moves, err := c.moves.PlinthMoves(ns).List(everything)
	if err != nil {
		return false
	}
	for _, o := range moves {
		if string(o.UID) == by {
			return false
		}
	}
	return true
}

// NodeReady reports whether the node's Ready condition is True.
func NodeReady(n *v1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// Fits says why no pool of pools takes a moved volume of a pool of
// backend, of this mode, filesystem and capacity ("" when one does).
func Fits(pools []v1alpha1.PoolStatus, backend, mode, fsType string, capacity int64) string {
	var why []string
	for _, p := range pools {
		switch {
		case !volume.TransferableTo(backend, p.Backend):
			why = append(why, fmt.Sprintf("%s is a %s pool, the volume's is a %s pool", p.Name, p.Backend, backend))
		case !p.Healthy:
			why = append(why, p.Name+" is unhealthy")
		case mode == v1alpha1.ModeBlock && !p.Block:
			why = append(why, p.Name+" holds no block volumes")
		case mode == v1alpha1.ModeFilesystem && fsType != "" && !slices.Contains(p.FsTypes, fsType):
			why = append(why, fmt.Sprintf("%s makes no %s", p.Name, fsType))
		case p.AllocatableBytes < capacity:
			why = append(why, fmt.Sprintf("%s has %s free for volumes, the volume is %s", p.Name,
				resource.NewQuantity(p.AllocatableBytes, resource.BinarySI), resource.NewQuantity(capacity, resource.BinarySI)))
		default:
			return ""
		}
	}
	if len(why) == 0 {
		return "it has no pools"
	}
	return strings.Join(why, "; ")
}

// active reports whether a move in phase still runs.
func active(p v1alpha1.MovePhase) bool {
	return p != v1alpha1.MoveDone && p != v1alpha1.MoveFailed
}
