package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// Reconciler reconciles the volume objects of one node.
type Reconciler struct {
	NodeName string
	Version  string
	Local    volume.Node
	Dyn      dynamic.Interface
	Core     kubernetes.Interface
	Events   record.EventRecorder
	// Devices, when set, lists the node's devices for its PlinthNode.
	Devices func() []v1alpha1.DeviceStatus
	// StatusInterval is the heartbeat of the PlinthNode (default 30s).
	StatusInterval time.Duration
	// Workers reconcile volumes in parallel (default 4).
	Workers int

	statusMu   sync.Mutex
	lastStatus *v1alpha1.NodeStatus
	lastWrite  time.Time
	lastRead   time.Time // when the last written status read the pools
	informer   cache.SharedIndexInformer
	queue      workqueue.TypedRateLimitingInterface[string]
}

// Run reconciles until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("reconcile")
	ctx = klog.NewContext(ctx, logger)
	if r.StatusInterval <= 0 {
		r.StatusInterval = 30 * time.Second
	}
	if r.Workers <= 0 {
		r.Workers = 4
	}
	// The node's status goes first: the controller places nothing on a
	// node it has not heard from.
	if err := wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
		if err := r.PublishStatus(ctx, true); err != nil {
			logger.Error(err, "Publishing node status")
			return false, nil
		}
		return true, nil
	}); err != nil {
		return nil
	}
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(r.Dyn, 10*time.Minute, "", func(o *metav1.ListOptions) {
		o.LabelSelector = v1alpha1.LabelNode + "=" + r.NodeName
	})
	r.informer = factory.ForResource(v1alpha1.VolumeResource).Informer()
	r.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "plinth-node-volumes"})
	defer r.queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			r.queue.Add(key)
		}
	}
	if _, err := r.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), r.informer.HasSynced) {
		return nil
	}
	logger.Info("Reconciling volume objects", "node", r.NodeName)
	for range r.Workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for r.next(ctx) {
			}
		}, time.Second)
	}
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := r.PublishStatus(ctx, false); err != nil {
			logger.Error(err, "Publishing node status")
		}
	}, r.StatusInterval)
	return nil
}

func (r *Reconciler) next(ctx context.Context) bool {
	key, quit := r.queue.Get()
	if quit {
		return false
	}
	defer r.queue.Done(key)
	if err := r.reconcile(ctx, key); err != nil {
		klog.FromContext(ctx).V(2).Info("Volume not settled, retrying", "volumeID", key, "err", err)
		r.queue.AddRateLimited(key)
		return true
	}
	r.queue.Forget(key)
	return true
}

func (r *Reconciler) reconcile(ctx context.Context, key string) error {
	obj, exists, err := r.informer.GetStore().GetByKey(key)
	if err != nil || !exists {
		return err
	}
	u := obj.(*unstructured.Unstructured)
	v, err := v1alpha1.FromUnstructured[v1alpha1.PlinthVolume](u)
	if err != nil {
		return err
	}
	if v.Spec.NodeName != r.NodeName {
		return nil // mislabelled: not ours to touch
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", v.Name, "pool", v.Spec.Pool)
	if v.DeletionTimestamp != nil {
		return r.remove(ctx, v, u)
	}
	local, lerr := r.Local.Volume(ctx, v.Name)
	switch {
	case v.Status.Phase == v1alpha1.VolumeFailed:
		return nil // the controller removes it
	case v.Status.Phase == v1alpha1.VolumeReady && errors.Is(lerr, pool.ErrNotFound):
		// The storage vanished under a volume that was made: say so, and
		// never make an empty one in its place.
		msg := "the volume's storage is missing from pool " + v.Spec.Pool
		if v.Status.Message != msg {
			r.event(u, v1.EventTypeWarning, "StorageMissing", msg)
			logger.Error(nil, "Storage missing")
			v.Status.Reason, v.Status.Message = v1alpha1.ReasonError, msg
			return r.writeStatus(ctx, v)
		}
		return nil
	case v.Status.Phase == v1alpha1.VolumeReady:
		if lerr != nil {
			return lerr
		}
		if v.Spec.CapacityBytes > local.CapacityBytes {
			return r.expand(ctx, v, u)
		}
		if v.Status.CapacityBytes != local.CapacityBytes || v.Status.ObservedGeneration != v.Generation {
			v.Status.CapacityBytes, v.Status.ObservedGeneration = local.CapacityBytes, v.Generation
			v.Status.Reason, v.Status.Message = "", ""
			return r.writeStatus(ctx, v)
		}
		return nil
	}
	// Pending: make it (idempotent: a half-made volume from before a crash
	// is finished or rebuilt by the pool).
	want := pool.Volume{
		ID: v.Name, Name: v.Spec.VolumeName, CapacityBytes: v.Spec.CapacityBytes, Mode: v1alpha1.PoolMode(v.Spec.Mode),
		FsType: v.Spec.FsType, Thick: v.Spec.Thick,
	}
	if v.Spec.Claim != "" {
		want.Parameters = map[string]string{volume.ParamOwner: v.Spec.Claim}
	}
	made, err := r.Local.CreateVolume(ctx, v.Spec.Pool, want)
	if err != nil {
		if retryable(err) {
			return err
		}
		v.Status.Phase = v1alpha1.VolumeFailed
		v.Status.Reason, v.Status.Message = reasonOf(err), err.Error()
		v.Status.ObservedGeneration = v.Generation
		r.event(u, v1.EventTypeWarning, "CreateFailed", err.Error())
		logger.Info("Volume refused", "err", err)
		return r.writeStatus(ctx, v)
	}
	// The pool's new numbers go out before the volume is called Ready, so
	// the controller never counts the volume in neither place.
	if err := r.publishAfter(ctx, made.CreatedAt); err != nil {
		return err
	}
	v.Status = v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: made.CapacityBytes, ObservedGeneration: v.Generation}
	logger.V(2).Info("Volume made", "capacity", made.CapacityBytes)
	return r.writeStatus(ctx, v)
}

func (r *Reconciler) expand(ctx context.Context, v *v1alpha1.PlinthVolume, u *unstructured.Unstructured) error {
	grown, err := r.Local.ExpandVolume(ctx, v.Name, v.Spec.CapacityBytes)
	v.Status.ObservedGeneration = v.Generation
	if err != nil {
		if retryable(err) {
			return err
		}
		r.event(u, v1.EventTypeWarning, "ExpandFailed", err.Error())
		v.Status.Reason, v.Status.Message = reasonOf(err), err.Error()
		return r.writeStatus(ctx, v)
	}
	if err := r.PublishStatus(ctx, true); err != nil {
		return err
	}
	v.Status.CapacityBytes, v.Status.Reason, v.Status.Message = grown.CapacityBytes, "", ""
	return r.writeStatus(ctx, v)
}

func (r *Reconciler) remove(ctx context.Context, v *v1alpha1.PlinthVolume, u *unstructured.Unstructured) error {
	has := false
	for _, f := range v.Finalizers {
		has = has || f == v1alpha1.Finalizer
	}
	if !has {
		return nil
	}
	err := r.Local.DeleteVolume(ctx, v.Name)
	if errors.Is(err, pool.ErrNotFound) {
		err = nil
	}
	if err != nil {
		if errors.Is(err, pool.ErrInUse) && v.Status.Reason != v1alpha1.ReasonInUse {
			r.event(u, v1.EventTypeWarning, "DeleteBlocked", err.Error())
			v.Status.Phase, v.Status.Reason, v.Status.Message = v1alpha1.VolumeDeleting, v1alpha1.ReasonInUse, err.Error()
			if werr := r.writeStatus(ctx, v); werr != nil {
				return werr
			}
		}
		return err
	}
	if err := r.PublishStatus(ctx, true); err != nil {
		klog.FromContext(ctx).Error(err, "Publishing node status after a delete")
	}
	var fins []string
	for _, f := range v.Finalizers {
		if f != v1alpha1.Finalizer {
			fins = append(fins, f)
		}
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": fins, "resourceVersion": v.ResourceVersion}})
	_, err = r.Dyn.Resource(v1alpha1.VolumeResource).Patch(ctx, v.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		klog.FromContext(ctx).V(2).Info("Volume removed", "volumeID", v.Name)
	}
	return err
}

func (r *Reconciler) writeStatus(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	u, err := v1alpha1.ToUnstructured(v)
	if err != nil {
		return err
	}
	_, err = r.Dyn.Resource(v1alpha1.VolumeResource).UpdateStatus(ctx, u, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (r *Reconciler) event(obj *unstructured.Unstructured, kind, reason, msg string) {
	if r.Events != nil {
		r.Events.Event(obj, kind, reason, msg)
	}
}

// retryable errors are worth another try as they are; the rest are the
// node's answer.
func retryable(err error) bool {
	return errors.Is(err, volume.ErrBusy) || errors.Is(err, pool.ErrDeleting) || errors.Is(err, context.Canceled) ||
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

// poolHealth is implemented by volume.LocalNode: pools that cannot be read
// are reported unhealthy instead of failing the whole status.
type poolHealth interface {
	PoolHealth(ctx context.Context) []volume.PoolHealth
}

// health is one thing whose health the Node's events follow.
type health struct {
	key        string // stable across statuses
	healthy    bool
	sick, well string // the event messages
}

// poolEvents records an event on the Node when a pool becomes unreadable
// or readable again.
func (r *Reconciler) poolEvents(pools []v1alpha1.PoolStatus) {
	var before, now []health
	if r.lastStatus != nil {
		for _, p := range r.lastStatus.Pools {
			before = append(before, health{key: p.Name, healthy: p.Healthy})
		}
	}
	for _, p := range pools {
		now = append(now, health{key: p.Name, healthy: p.Healthy,
			sick: fmt.Sprintf("pool %s cannot be read: %s; no new volumes are placed on it", p.Name, p.Message),
			well: fmt.Sprintf("pool %s is readable again", p.Name)})
	}
	r.healthEvents("Pool", before, now)
}

// deviceEvents records an event on the Node for every device whose health
// changed since the last status (and for unhealthy ones at the first).
func (r *Reconciler) deviceEvents(devs []v1alpha1.DeviceStatus) {
	var before, now []health
	if r.lastStatus != nil {
		for _, d := range r.lastStatus.Devices {
			before = append(before, health{key: d.Resource + "/" + d.ID, healthy: d.Healthy})
		}
	}
	for _, d := range devs {
		now = append(now, health{key: d.Resource + "/" + d.ID, healthy: d.Healthy,
			sick: fmt.Sprintf("%s device %s is unhealthy: not advertised to the kubelet until it recovers", d.Resource, d.ID),
			well: fmt.Sprintf("%s device %s is healthy again", d.Resource, d.ID)})
	}
	r.healthEvents("Device", before, now)
}

// healthEvents records <kind>Unhealthy for what is unhealthy now and was
// healthy (or unknown) before, and <kind>Healthy for what recovered.
func (r *Reconciler) healthEvents(kind string, before, now []health) {
	if r.Events == nil {
		return
	}
	was := map[string]bool{}
	for _, h := range before {
		was[h.key] = h.healthy
	}
	node := &v1.ObjectReference{Kind: "Node", Name: r.NodeName, UID: types.UID(r.NodeName)}
	for _, h := range now {
		prev, seen := was[h.key]
		switch {
		case !h.healthy && (!seen || prev):
			r.Events.Event(node, v1.EventTypeWarning, kind+"Unhealthy", h.sick)
		case h.healthy && seen && !prev:
			r.Events.Event(node, v1.EventTypeNormal, kind+"Healthy", h.well)
		}
	}
}

// publishAfter makes sure a status that read the pools after t is out:
// creates finishing together share one write.
func (r *Reconciler) publishAfter(ctx context.Context, t time.Time) error {
	r.statusMu.Lock()
	done := r.lastRead.After(t)
	r.statusMu.Unlock()
	if done {
		return nil
	}
	return r.PublishStatus(ctx, true)
}

// PublishStatus writes the node's pools and devices to its PlinthNode;
// unless force, only when they changed or the heartbeat is due.
func (r *Reconciler) PublishStatus(ctx context.Context, force bool) error {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	read := time.Now()
	st := v1alpha1.NodeStatus{Version: r.Version}
	var infos []volume.PoolInfo
	var failed []volume.PoolHealth
	if h, ok := r.Local.(poolHealth); ok {
		for _, ph := range h.PoolHealth(ctx) {
			if ph.Err != nil {
				failed = append(failed, ph)
				continue
			}
			infos = append(infos, volume.PoolInfo{Name: ph.Name, Backend: ph.Backend, Capabilities: ph.Capabilities, Stats: ph.Stats})
		}
	} else {
		var err error
		if infos, err = r.Local.Pools(ctx); err != nil {
			return err
		}
	}
	for _, pi := range infos {
		st.Pools = append(st.Pools, v1alpha1.PoolStatus{
			Name: pi.Name, Backend: pi.Backend, Block: pi.Capabilities.Block, FsTypes: pi.Capabilities.FsTypes,
			OwnFs: pi.Capabilities.OwnFs, TotalBytes: pi.Stats.TotalBytes, FreeBytes: pi.Stats.FreeBytes,
			CommittedBytes: pi.Stats.CommittedBytes, AllocatableBytes: pi.Stats.AllocatableBytes(),
			ProvisionedBytes: pi.Stats.ProvisionedBytes, Volumes: pi.Stats.Volumes, Healthy: true,
		})
	}
	for _, ph := range failed {
		st.Pools = append(st.Pools, v1alpha1.PoolStatus{Name: ph.Name, Backend: ph.Backend, Healthy: false, Message: ph.Err.Error()})
	}
	r.poolEvents(st.Pools)
	st.PoolCount = len(st.Pools)
	if r.Devices != nil {
		st.Devices = r.Devices()
		st.DeviceCount = len(st.Devices)
		r.deviceEvents(st.Devices)
	}
	if !force && r.lastStatus != nil && reflect.DeepEqual(*r.lastStatus, st) && time.Since(r.lastWrite) < r.StatusInterval {
		return nil
	}
	st.HeartbeatTime = metav1.Now()
	api := r.Dyn.Resource(v1alpha1.NodeResource)
	cur, err := api.Get(ctx, r.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj := &v1alpha1.PlinthNode{ObjectMeta: metav1.ObjectMeta{Name: r.NodeName}}
		// Owned by the Kubernetes Node: when the node leaves, so does this.
		if n, nerr := r.Core.CoreV1().Nodes().Get(ctx, r.NodeName, metav1.GetOptions{}); nerr == nil {
			obj.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
		}
		u, cerr := v1alpha1.ToUnstructured(obj)
		if cerr != nil {
			return cerr
		}
		if cur, err = api.Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create PlinthNode %s: %w", r.NodeName, err)
		}
		if err != nil {
			cur, err = api.Get(ctx, r.NodeName, metav1.GetOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("read PlinthNode %s: %w", r.NodeName, err)
	}
	n, err := v1alpha1.FromUnstructured[v1alpha1.PlinthNode](cur)
	if err != nil {
		return err
	}
	n.Status = st
	u, err := v1alpha1.ToUnstructured(n)
	if err != nil {
		return err
	}
	if _, err := api.UpdateStatus(ctx, u, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write PlinthNode %s status: %w", r.NodeName, err)
	}
	st.HeartbeatTime = metav1.Time{}
	r.lastStatus, r.lastWrite, r.lastRead = &st, time.Now(), read
	return nil
}
