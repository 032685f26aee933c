package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// Reconciler reconciles the volume and snapshot objects of one node.
type Reconciler struct {
	NodeName string
	Local    volume.Node
	Plinth   versioned.Interface
	Core     kubernetes.Interface
	Events   record.EventRecorder
	// Status publishes the node's PlinthNode (pkg/nodestatus): first, and
	// again whenever a volume changes the pools' numbers.
	Status Status
	// Workers reconcile volumes in parallel (default 4).
	Workers int
	// Usage reads the volumes' used bytes for their status.usedBytes;
	// nil: the pools' own (pool.Pool.Usage, where Local offers its
	// pools). UsageInterval is how often it is read (default 1 minute);
	// what is written is bounded (usage.go).
	Usage         UsageReader
	UsageInterval time.Duration
	// Transfer fills volumes whose source is on another node (their
	// spec.source.nodeName); nil refuses them.
	Transfer Fetcher
	// Consumers, when set, applies a modified volume to what uses it now
	// (the IO limits of the pods it is published to, a trim of its
	// mounted filesystem when it became thin): node.Mounts.Reapply.
	Consumers func(ctx context.Context, id string) error
	// CanLimit, when set, says why this node cannot enforce IO limits
	// (nil: it can): a change that asks for limits is then refused.
	CanLimit func() error
	// reapply holds the volumes whose change is recorded on the node but
	// not yet applied to their consumers (Consumers failed): applied
	// before anything else is said of them.
	reapply sync.Map

	imports imports

	informer  cache.SharedIndexInformer
	snapInf   cache.SharedIndexInformer
	volumes   listers.PlinthVolumeLister
	snapshots listers.PlinthSnapshotLister
	// queue holds volume IDs and, prefixed with snapshotKey, snapshot IDs.
	queue workqueue.TypedRateLimitingInterface[string]
	// started: informer and queue are ready for RequeueVolumes.
	started atomic.Bool
}

// RequeueVolumes reconciles every volume object of the node again: the
// node's storage changed under them (a disk came or went, a pool's health
// changed), so their status may have to say so.
func (r *Reconciler) RequeueVolumes() {
	if !r.started.Load() {
		return
	}
	for _, key := range r.informer.GetStore().ListKeys() {
		r.queue.Add(key)
	}
}

// snapshotKey prefixes a snapshot's ID in the queue.
const snapshotKey = "snapshot/"

// Status is what the reconciler needs of the node-status publisher.
type Status interface {
	// Publish writes the node's status now (force) or when it changed.
	Publish(ctx context.Context, force bool) error
	// PublishAfter makes sure a status that read the pools after t is out,
	// and returns its sequence (the volume's status.countedIn).
	PublishAfter(ctx context.Context, t time.Time) (int64, error)
}

// Run reconciles until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("reconcile")
	ctx = klog.NewContext(ctx, logger)
	if r.Workers <= 0 {
		r.Workers = 4
	}
	// The node's status goes first: the controller places nothing on a
	// node it has not heard from.
	if err := wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
		if err := r.Status.Publish(ctx, true); err != nil {
			logger.Error(err, "Publishing node status")
			return false, nil
		}
		return true, nil
	}); err != nil {
		return nil
	}
	factory := externalversions.NewSharedInformerFactoryWithOptions(r.Plinth, 10*time.Minute,
		externalversions.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = v1alpha1.LabelNode + "=" + r.NodeName
		}))
	inf := factory.Plinth().V1alpha1().PlinthVolumes()
	r.informer, r.volumes = inf.Informer(), inf.Lister()
	sinf := factory.Plinth().V1alpha1().PlinthSnapshots()
	r.snapInf, r.snapshots = sinf.Informer(), sinf.Lister()
	r.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "plinth-node-volumes"})
	defer r.queue.ShutDown()
	for prefix, inf := range map[string]cache.SharedIndexInformer{"": r.informer, snapshotKey: r.snapInf} {
		enqueue := func(obj any) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				r.queue.Add(prefix + key)
			}
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
		}); err != nil {
			return err
		}
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), r.informer.HasSynced, r.snapInf.HasSynced) {
		return nil
	}
	r.started.Store(true)
	logger.Info("Reconciling volume objects", "node", r.NodeName)
	for range r.Workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for r.next(ctx) {
			}
		}, time.Second)
	}
	go r.runUsage(ctx)
	<-ctx.Done()
	return nil
}

func (r *Reconciler) next(ctx context.Context) bool {
	key, quit := r.queue.Get()
	if quit {
		return false
	}
	defer r.queue.Done(key)
	var err error
	if id, ok := strings.CutPrefix(key, snapshotKey); ok {
		err = r.reconcileSnapshot(ctx, id)
	} else {
		err = r.reconcile(ctx, key)
	}
	if err != nil {
		klog.FromContext(ctx).V(2).Info("Object not settled, retrying", "key", key, "err", err)
		r.queue.AddRateLimited(key)
		return true
	}
	r.queue.Forget(key)
	return true
}

// unopener is a node that can name its pools whose records cannot be read
// (node.Local: their disks were missing when plinth started).
type unopener interface {
	Unopened(context.Context) []string
}

func (r *Reconciler) reconcile(ctx context.Context, key string) error {
	cached, err := r.volumes.Get(key)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	v := cached.DeepCopy() // its status is written below; the cache's copy stays as it is
	if v.Spec.NodeName != r.NodeName {
		return nil // mislabelled: not ours to touch
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", v.Name, "pool", v.Spec.Pool)
	if v.DeletionTimestamp != nil {
		r.stopImport(ctx, v.Name)
		return r.remove(ctx, v)
	}
	local, lerr := r.Local.Volume(ctx, v.Name)
	switch {
	case v.Status.Phase == v1alpha1.VolumeFailed:
		return nil // the controller removes it
	case v.Status.Phase == v1alpha1.VolumeReady && errors.Is(lerr, pool.ErrNotFound):
		// The storage vanished under a volume that was made: say so, and
		// never make an empty one in its place.
		msg := "the volume's storage is missing from pool " + v.Spec.Pool
		if u, ok := r.Local.(unopener); ok && slices.Contains(u.Unopened(ctx), v.Spec.Pool) {
			msg = "pool " + v.Spec.Pool + " cannot be opened (its disks are missing or its filesystem fails); the volume is kept until it is back"
		}
		if v.Status.Message != msg {
			r.event(v, v1.EventTypeWarning, "StorageMissing", msg)
			logger.Error(nil, "Storage missing")
			v.Status.Reason, v.Status.Message = v1alpha1.ReasonError, msg
			return r.writeStatus(ctx, v)
		}
		return nil
	case v.Status.Phase == v1alpha1.VolumeReady:
		if lerr != nil {
			return lerr
		}
		if s := v.Spec.Sync; s != nil && v.Status.SyncedVolumeID != s.VolumeID && v.Status.Reason != v1alpha1.ReasonSyncFailed {
			return r.startSync(ctx, v)
		}
		if _, pending := r.reapply.Load(v.Name); pending {
			if err := r.consumers(ctx, v); err != nil {
				return err
			}
		}
		// Before an expansion, which may be refused at every try: a
		// refused expansion must not hold a class change back.
		if want := specMutable(v); !pool.MutableOf(local).Equal(want) {
			if v.Status.ObservedGeneration == v.Generation && v.Status.Applied != nil && (v.Status.Reason == v1alpha1.ReasonNoSpace || v.Status.Reason == v1alpha1.ReasonInvalid || v.Status.Reason == v1alpha1.ReasonUnsupported) {
				return nil // refused at this generation: a new spec tries again
			}
			return r.modify(ctx, v, local, want)
		}
		if v.Spec.CapacityBytes > local.CapacityBytes {
			return r.expand(ctx, v)
		}
		if local.Problem != "" {
			// Its disk is gone or its pool's filesystem fails: the object
			// says so (ControllerGetVolumeHealth reads it) until it is back.
			if v.Status.Reason != v1alpha1.ReasonUnreachable || v.Status.Message != local.Problem {
				r.event(v, v1.EventTypeWarning, "StorageUnreachable", local.Problem)
				v.Status.Reason, v.Status.Message = v1alpha1.ReasonUnreachable, local.Problem
				return r.writeStatus(ctx, v)
			}
			return nil
		}
		// Written once a volume was modified: a node that finds nothing to
		// change writes nothing (an upgrade is not a write per volume).
		if applied := appliedOf(local); v.Status.Applied != nil && !equality.Semantic.DeepEqual(v.Status.Applied, applied) {
			v.Status.Applied = applied
			if v.Status.Reason == v1alpha1.ReasonNoSpace || v.Status.Reason == v1alpha1.ReasonInvalid {
				v.Status.Reason, v.Status.Message = "", "" // the refused change was taken back
			}
			v.Status.ObservedGeneration = v.Generation
			return r.writeStatus(ctx, v)
		}
		if v.Status.Reason == v1alpha1.ReasonSyncFailed {
			if v.Status.ObservedGeneration != v.Generation {
				v.Status.ObservedGeneration = v.Generation
				return r.writeStatus(ctx, v)
			}
			return nil // the move that asked for the sync rolls back
		}
		if v.Status.CapacityBytes != local.CapacityBytes || v.Status.ObservedGeneration != v.Generation || v.Status.Message != "" {
			v.Status.CapacityBytes, v.Status.ObservedGeneration = local.CapacityBytes, v.Generation
			v.Status.Reason, v.Status.Message = "", ""
			// A node that answers a generation says what holds: the
			// controller waits for this, not for the generation alone,
			// which a node older than status.applied answers too.
			v.Status.Applied = appliedOf(local)
			return r.writeStatus(ctx, v)
		}
		return nil
	}
	if src := v.Spec.Source; src != nil && src.NodeName != "" && src.NodeName != r.NodeName {
		return r.startImport(ctx, v)
	}
	// Pending: make it (idempotent: a half-made volume from before a crash
	// is finished or rebuilt by the pool).
	want := pool.Volume{
		ID: v.Name, Name: v.Spec.VolumeName, CapacityBytes: v.Spec.CapacityBytes, Mode: poolMode(v.Spec.Mode),
		FsType: v.Spec.FsType, Thick: v.Spec.Thick, IOLimits: specMutable(v).IOLimits,
	}
	if v.Spec.Claim != "" {
		want.Parameters = map[string]string{volume.ParamOwner: v.Spec.Claim}
	}
	if src := v.Spec.Source; src != nil {
		want.Source = &pool.Source{SnapshotID: src.SnapshotID, VolumeID: src.VolumeID}
	}
	made, err := r.Local.CreateVolume(ctx, v.Spec.Pool, want)
	if err != nil {
		if retryable(err) {
			return err
		}
		v.Status.Phase = v1alpha1.VolumeFailed
		v.Status.Reason, v.Status.Message = reasonOf(err), err.Error()
		if v.Spec.Source != nil && errors.Is(err, pool.ErrNotFound) {
			v.Status.Reason = v1alpha1.ReasonNotFound // the source, not the pool
		}
		v.Status.ObservedGeneration = v.Generation
		r.event(v, v1.EventTypeWarning, "CreateFailed", err.Error())
		logger.Info("Volume refused", "err", err)
		return r.writeStatus(ctx, v)
	}
	// The pool's new numbers go out before the volume is called Ready, so
	// the controller never counts the volume in neither place.
	counted, err := r.Status.PublishAfter(ctx, made.CreatedAt)
	if err != nil {
		return err
	}
	v.Status = v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: made.CapacityBytes, ObservedGeneration: v.Generation, CountedIn: counted}
	logger.V(2).Info("Volume made", "capacity", made.CapacityBytes)
	return r.writeStatus(ctx, v)
}

func (r *Reconciler) expand(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	grown, err := r.Local.ExpandVolume(ctx, v.Name, v.Spec.CapacityBytes)
	v.Status.ObservedGeneration = v.Generation
	if err != nil {
		if retryable(err) {
			return err
		}
		r.event(v, v1.EventTypeWarning, "ExpandFailed", err.Error())
		v.Status.Reason, v.Status.Message = reasonOf(err), err.Error()
		return r.writeStatus(ctx, v)
	}
	if err := r.Status.Publish(ctx, true); err != nil {
		return err
	}
	v.Status.CapacityBytes, v.Status.Reason, v.Status.Message = grown.CapacityBytes, "", ""
	return r.writeStatus(ctx, v)
}

// canLimit refuses a change that asks for IO limits on a node that cannot
// enforce them.
func (r *Reconciler) canLimit(want pool.Mutable) error {
	if want.IOLimits.IsZero() || r.CanLimit == nil {
		return nil
	}
	if err := r.CanLimit(); err != nil {
		return fmt.Errorf("%w: node %s cannot enforce IO limits: %w", pool.ErrUnsupported, r.NodeName, err)
	}
	return nil
}

// consumers applies volume v's recorded attributes to what uses it now,
// and forgets it was pending once that is done.
func (r *Reconciler) consumers(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	if r.Consumers != nil {
		if err := r.Consumers(ctx, v.Name); err != nil {
			r.event(v, v1.EventTypeWarning, "ModifyIncomplete", err.Error())
			return fmt.Errorf("apply volume %s's attributes to its consumers: %w", v.Name, err)
		}
	}
	r.reapply.Delete(v.Name)
	return nil
}

// specMutable is what v's spec asks of the volume's mutable attributes.
func specMutable(v *v1alpha1.PlinthVolume) pool.Mutable {
	m := pool.Mutable{Thick: v.Spec.Thick}
	if v.Spec.IOLimits != nil {
		l := pool.IOLimits(*v.Spec.IOLimits) // the same fields
		m.IOLimits = &l
	}
	return m
}

// appliedOf is the status.applied of a volume whose record is local.
func appliedOf(local pool.Volume) *v1alpha1.AppliedAttributes {
	a := &v1alpha1.AppliedAttributes{Thick: local.Thick}
	if !local.IOLimits.IsZero() {
		l := v1alpha1.IOLimits(*local.IOLimits)
		a.IOLimits = &l
	}
	return a
}

// modify makes a Ready volume's provisioning and IO limits what its spec
// asks, then applies them to its consumers. A change the pool refuses
// (ErrNoSpace, ErrInvalid) is reported in the status at this generation
// and not tried again until the spec changes.
func (r *Reconciler) modify(ctx context.Context, v *v1alpha1.PlinthVolume, local pool.Volume, want pool.Mutable) error {
	logger := klog.FromContext(ctx).WithValues("volumeID", v.Name)
	var got pool.Volume
	err := r.canLimit(want)
	if err == nil {
		got, err = r.Local.ModifyVolume(ctx, v.Name, want)
	}
	if err != nil {
		if retryable(err) {
			return err
		}
		r.event(v, v1.EventTypeWarning, "ModifyFailed", err.Error())
		logger.Info("Volume modification refused", "err", err)
		v.Status.ObservedGeneration = v.Generation
		v.Status.Reason, v.Status.Message = reasonOf(err), err.Error()
		v.Status.Applied = appliedOf(local) // what holds still
		return r.writeStatus(ctx, v)
	}
	// Recorded on the node: from here on a failure to reach the consumers
	// is tried again (reapply) before the change is called applied.
	r.reapply.Store(v.Name, true)
	if err := r.consumers(ctx, v); err != nil {
		return err
	}
	if err := r.Status.Publish(ctx, true); err != nil {
		return err
	}
	logger.V(2).Info("Volume modified", "thick", got.Thick, "ioLimits", got.IOLimits)
	v.Status.Applied = appliedOf(got)
	v.Status.ObservedGeneration = v.Generation
	v.Status.Reason, v.Status.Message = "", ""
	return r.writeStatus(ctx, v)
}

func (r *Reconciler) remove(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	if !hasFinalizer(v.ObjectMeta) {
		return nil
	}
	err := r.Local.DeleteVolume(ctx, v.Name)
	if errors.Is(err, pool.ErrNotFound) {
		err = nil
	}
	if err != nil {
		if errors.Is(err, pool.ErrInUse) && v.Status.Reason != v1alpha1.ReasonInUse {
			r.event(v, v1.EventTypeWarning, "DeleteBlocked", err.Error())
			v.Status.Phase, v.Status.Reason, v.Status.Message = v1alpha1.VolumeDeleting, v1alpha1.ReasonInUse, err.Error()
			if werr := r.writeStatus(ctx, v); werr != nil {
				return werr
			}
		}
		return err
	}
	if err := r.Status.Publish(ctx, true); err != nil {
		klog.FromContext(ctx).Error(err, "Publishing node status after a delete")
	}
	_, err = r.Plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, v.Name, types.MergePatchType, dropFinalizer(v.ObjectMeta), metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		klog.FromContext(ctx).V(2).Info("Volume removed", "volumeID", v.Name)
	}
	return err
}

// dropFinalizer is the merge patch that takes plinth's finalizer off an
// object, if it is still at the version read.
func dropFinalizer(m metav1.ObjectMeta) []byte {
	var fins []string
	for _, f := range m.Finalizers {
		if f != v1alpha1.Finalizer {
			fins = append(fins, f)
		}
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": fins, "resourceVersion": m.ResourceVersion}})
	return patch
}

// hasFinalizer reports whether plinth's finalizer is on an object.
func hasFinalizer(m metav1.ObjectMeta) bool {
	return slices.Contains(m.Finalizers, v1alpha1.Finalizer)
}

func (r *Reconciler) writeStatus(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	_, err := r.Plinth.PlinthV1alpha1().PlinthVolumes().UpdateStatus(ctx, v, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// event records an event on volume object v. The reference carries its
// kind and apiVersion, which objects from a typed client leave empty, so
// the recorder needs no scheme that knows plinth's kinds.
func (r *Reconciler) event(v *v1alpha1.PlinthVolume, kind, reason, msg string) {
	if r.Events != nil {
		r.Events.Event(eventObject(v1alpha1.VolumeKind, v.ObjectMeta), kind, reason, msg)
	}
}

func eventObject(kind string, m metav1.ObjectMeta) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: kind},
		ObjectMeta: metav1.ObjectMeta{Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion},
	}
}

// retryable errors are worth another try as they are; the rest are the
// node's answer.
func retryable(err error) bool {
	return errors.Is(err, volume.ErrLocked) || errors.Is(err, pool.ErrDeleting) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded)
}

func reasonOf(err error) string {
	switch {
	case errors.Is(err, pool.ErrNoSpace):
		return v1alpha1.ReasonNoSpace
	case errors.Is(err, pool.ErrInvalid), errors.Is(err, pool.ErrExists), errors.Is(err, pool.ErrOutOfRange):
		return v1alpha1.ReasonInvalid
	case errors.Is(err, pool.ErrUnsupported):
		return v1alpha1.ReasonUnsupported
	case errors.Is(err, pool.ErrNotFound):
		return v1alpha1.ReasonNoPool
	case errors.Is(err, pool.ErrInUse):
		return v1alpha1.ReasonInUse
	}
	return v1alpha1.ReasonError
}

// poolMode is a PlinthVolume's mode as the pools spell it (filesystem, block).
func poolMode(m string) pool.Mode {
	if m == v1alpha1.ModeBlock {
		return pool.ModeBlock
	}
	return pool.ModeFilesystem
}
