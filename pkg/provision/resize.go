package provision

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// Resizer expands the volumes of PVCs whose request grew: the node grows
// the storage, the PV gets the new capacity, and the PVC is marked so that
// the kubelet finishes with NodeExpandVolume (the work the external-resizer
// sidecar does elsewhere).
type Resizer struct {
	Client     kubernetes.Interface
	Claims     cache.SharedIndexInformer
	Volumes    corelisters.PersistentVolumeLister
	Controller *volume.Controller
	Driver     string
	Events     record.EventRecorder
	// Observe, when set, hears each expansion that finishes (metrics).
	Observe Observer

	queue workqueue.TypedRateLimitingInterface[string]
}

// Run watches PVCs until ctx ends.
func (r *Resizer) Run(ctx context.Context) error {
	r.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, 2*time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "plinth-resizer"})
	defer r.queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			r.queue.Add(key)
		}
	}
	reg, err := r.Claims.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	if err != nil {
		return err
	}
	defer func() { _ = r.Claims.RemoveEventHandler(reg) }()
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		for r.next(ctx) {
		}
	}, time.Second)
	<-ctx.Done()
	return nil
}

func (r *Resizer) next(ctx context.Context) bool {
	key, quit := r.queue.Get()
	if quit {
		return false
	}
	defer r.queue.Done(key)
	if err := r.sync(ctx, key); err != nil {
		klog.FromContext(ctx).V(2).Info("Resize not finished", "pvc", key, "err", err)
		r.queue.AddRateLimited(key)
		return true
	}
	r.queue.Forget(key)
	return true
}

func (r *Resizer) sync(ctx context.Context, key string) error {
	obj, exists, err := r.Claims.GetStore().GetByKey(key)
	if err != nil || !exists {
		return err
	}
	pvc := obj.(*v1.PersistentVolumeClaim)
	if pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" {
		return nil
	}
	pv, err := r.Volumes.Get(pvc.Spec.VolumeName)
	if err != nil {
		return nil // the PV informer will catch up; a later PVC update retries
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != r.Driver {
		return nil
	}
	want := pvc.Spec.Resources.Requests[v1.ResourceStorage]
	have := pv.Spec.Capacity[v1.ResourceStorage]
	// A resize this resizer began and did not finish (its PV or PVC update
	// failed after the volume grew) is finished even though the PV may
	// already say the new size; expanding again is a no-op on the node.
	unfinished := pvc.Status.AllocatedResourceStatuses[v1.ResourceStorage] == v1.PersistentVolumeClaimControllerResizeInProgress
	if want.Cmp(have) <= 0 && !unfinished {
		return nil
	}
	if want.Cmp(have) > 0 {
		// The PV lister can lag this resizer's own PV update: a PVC event
		// right after a finished resize would otherwise start it again and
		// leave the PVC marked Resizing when the stale PV update conflicts.
		live, err := r.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pv, have = live, live.Spec.Capacity[v1.ResourceStorage]
		if want.Cmp(have) <= 0 && !unfinished {
			return nil
		}
	}
	logger := klog.FromContext(ctx).WithValues("pvc", klog.KObj(pvc), "pv", pv.Name)
	pvc = pvc.DeepCopy()
	pvc.Status.AllocatedResources = v1.ResourceList{v1.ResourceStorage: want}
	setResizeStatus(pvc, v1.PersistentVolumeClaimControllerResizeInProgress)
	setCondition(pvc, v1.PersistentVolumeClaimResizing, fmt.Sprintf("plinth is expanding the volume to %s", want.String()))
	if pvc, err = r.Client.CoreV1().PersistentVolumeClaims(pvc.Namespace).UpdateStatus(ctx, pvc, metav1.UpdateOptions{}); err != nil {
		return err
	}
	start := time.Now()
	placed, err := r.Controller.ExpandVolume(ctx, pv.Spec.CSI.VolumeHandle, want.Value(), 0)
	switch {
	case err == nil:
		r.Observe.observe("expand", "success", start)
	case errors.Is(err, ErrInProgress):
		r.Observe.observe("expand", "in_progress", start)
	default:
		r.Observe.observe("expand", "error", start)
	}
	if err != nil {
		if !errors.Is(err, ErrInProgress) && r.Events != nil {
			r.Events.Event(pvc, v1.EventTypeWarning, "VolumeResizeFailed", err.Error())
		}
		if errors.Is(err, pool.ErrNoSpace) || errors.Is(err, pool.ErrInvalid) || errors.Is(err, pool.ErrOutOfRange) {
			setResizeStatus(pvc, v1.PersistentVolumeClaimControllerResizeInfeasible)
			if _, uerr := r.Client.CoreV1().PersistentVolumeClaims(pvc.Namespace).UpdateStatus(ctx, pvc, metav1.UpdateOptions{}); uerr != nil {
				logger.Error(uerr, "Marking the resize infeasible")
			}
		}
		return err
	}
	newCap := *resource.NewQuantity(placed.Volume.CapacityBytes, resource.BinarySI)
	if have.Cmp(newCap) != 0 {
		pv = pv.DeepCopy()
		pv.Spec.Capacity[v1.ResourceStorage] = newCap
		if _, err := r.Client.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	if placed.NodeExpansion {
		// The kubelet grows the filesystem (NodeExpandVolume) and then sets
		// the PVC's capacity itself.
		setResizeStatus(pvc, v1.PersistentVolumeClaimNodeResizePending)
		setCondition(pvc, v1.PersistentVolumeClaimFileSystemResizePending, "Waiting for user to (re-)start a pod to finish file system resize of volume on node.")
	} else {
		delete(pvc.Status.AllocatedResourceStatuses, v1.ResourceStorage)
		pvc.Status.Capacity = v1.ResourceList{v1.ResourceStorage: newCap}
		removeCondition(pvc, v1.PersistentVolumeClaimResizing)
	}
	if _, err := r.Client.CoreV1().PersistentVolumeClaims(pvc.Namespace).UpdateStatus(ctx, pvc, metav1.UpdateOptions{}); err != nil {
		return err
	}
	if r.Events != nil {
		r.Events.Event(pvc, v1.EventTypeNormal, "VolumeResizeSuccessful", fmt.Sprintf("plinth expanded the volume on node %s to %s", placed.Node, newCap.String()))
	}
	logger.V(2).Info("Expanded", "capacity", placed.Volume.CapacityBytes, "nodeExpansion", placed.NodeExpansion)
	return nil
}

func setResizeStatus(pvc *v1.PersistentVolumeClaim, s v1.ClaimResourceStatus) {
	if pvc.Status.AllocatedResourceStatuses == nil {
		pvc.Status.AllocatedResourceStatuses = map[v1.ResourceName]v1.ClaimResourceStatus{}
	}
	pvc.Status.AllocatedResourceStatuses[v1.ResourceStorage] = s
}

func setCondition(pvc *v1.PersistentVolumeClaim, t v1.PersistentVolumeClaimConditionType, msg string) {
	removeCondition(pvc, v1.PersistentVolumeClaimResizing)
	removeCondition(pvc, t)
	pvc.Status.Conditions = append(pvc.Status.Conditions, v1.PersistentVolumeClaimCondition{
		Type: t, Status: v1.ConditionTrue, LastTransitionTime: metav1.Now(), Message: msg,
	})
}

func removeCondition(pvc *v1.PersistentVolumeClaim, t v1.PersistentVolumeClaimConditionType) {
	out := pvc.Status.Conditions[:0]
	for _, c := range pvc.Status.Conditions {
		if c.Type != t {
			out = append(out, c)
		}
	}
	pvc.Status.Conditions = out
}
