package provision

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/volume"
)

// Modifier is the CSI call a VolumeAttributesClass change goes through:
// the ControllerServer that plinth's CSI socket serves, so that a class
// change and a CSI client are answered by the same code.
type Modifier interface {
	ControllerModifyVolume(context.Context, *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error)
}

// Attributes applies the VolumeAttributesClass a bound claim names
// (spec.volumeAttributesClassName) to its volume, the work the
// external-resizer's modify controller does elsewhere: it marks the
// claim's modifyVolumeStatus InProgress, calls ControllerModifyVolume with
// the class's parameters, and then records the class on the PV
// (spec.volumeAttributesClassName) and the claim
// (status.currentVolumeAttributesClassName). A class that does not exist
// yet leaves the claim Pending (tried again when it appears); a class of
// another driver, or one the volume cannot take (InvalidArgument: a key
// plinth does not know, thick in a full pool), Infeasible with an event
// saying why, not tried again until the claim names another class.
type Attributes struct {
	Client  kubernetes.Interface
	Claims  cache.SharedIndexInformer
	Volumes corelisters.PersistentVolumeLister
	// Classes are the VolumeAttributesClasses; ClassInformer, when set, is
	// theirs, so that a claim waiting for its class goes on when it comes.
	Classes       storagelisters.VolumeAttributesClassLister
	ClassInformer cache.SharedIndexInformer
	CSI           Modifier
	Driver        string
	Events        record.EventRecorder
	// Observe, when set, hears each modification that finishes.
	Observe Observer

	queue workqueue.TypedRateLimitingInterface[string]

	// answered is, per claim, the class this controller last gave a final
	// answer for (applied or Infeasible). The claims cache lags the
	// status this controller writes, and an event for its own write would
	// otherwise call ControllerModifyVolume again for the same class.
	mu       sync.Mutex
	answered map[types.UID]string
}

// Run watches PVCs until ctx ends.
func (a *Attributes) Run(ctx context.Context) error {
	a.answered = map[types.UID]string{}
	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "plinth-attributes"})
	defer a.queue.ShutDown()
	enqueue := func(obj any) {
		if pvc, ok := obj.(*v1.PersistentVolumeClaim); ok && pvc.Spec.VolumeAttributesClassName != nil {
			if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
				a.queue.Add(key)
			}
		}
	}
	reg, err := a.Claims.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if pvc, ok := obj.(*v1.PersistentVolumeClaim); ok {
				a.mu.Lock()
				delete(a.answered, pvc.UID)
				a.mu.Unlock()
			}
		},
	})
	if err != nil {
		return err
	}
	defer func() { _ = a.Claims.RemoveEventHandler(reg) }()
	if a.ClassInformer != nil {
		// A class that appears: the claims waiting for it go on.
		creg, err := a.ClassInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(any) {
			for _, obj := range a.Claims.GetStore().List() {
				if pvc := obj.(*v1.PersistentVolumeClaim); pvc.Status.ModifyVolumeStatus != nil &&
					pvc.Status.ModifyVolumeStatus.Status == v1.PersistentVolumeClaimModifyVolumePending {
					enqueue(pvc)
				}
			}
		}})
		if err != nil {
			return err
		}
		defer func() { _ = a.ClassInformer.RemoveEventHandler(creg) }()
	}
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		for a.next(ctx) {
		}
	}, time.Second)
	<-ctx.Done()
	return nil
}

func (a *Attributes) next(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	if err := a.sync(ctx, key); err != nil {
		klog.FromContext(ctx).V(2).Info("Volume attributes not applied yet", "pvc", key, "err", err)
		a.queue.AddRateLimited(key)
		return true
	}
	a.queue.Forget(key)
	return true
}

func (a *Attributes) sync(ctx context.Context, key string) error {
	obj, exists, err := a.Claims.GetStore().GetByKey(key)
	if err != nil || !exists {
		return err
	}
	pvc := obj.(*v1.PersistentVolumeClaim)
	// An empty class name is no class (the API: no VolumeAttributesClass
	// is applied to the claim).
	if pvc.Spec.VolumeAttributesClassName == nil || *pvc.Spec.VolumeAttributesClassName == "" ||
		pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" {
		return nil
	}
	target := *pvc.Spec.VolumeAttributesClassName
	current := pvc.Status.CurrentVolumeAttributesClassName
	ms := pvc.Status.ModifyVolumeStatus
	if current != nil && *current == target && ms == nil {
		return nil
	}
	if ms != nil && ms.TargetVolumeAttributesClassName == target && ms.Status == v1.PersistentVolumeClaimModifyVolumeInfeasible {
		return nil // refused; naming another class tries again
	}
	if a.wasAnswered(pvc.UID, target) {
		return nil // answered; the cache has not seen the status written yet
	}
	pv, err := a.Volumes.Get(pvc.Spec.VolumeName)
	if err != nil {
		return nil // the PV informer catches up; a later PVC update retries
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != a.Driver {
		return nil
	}
	if current == nil && pv.Spec.VolumeAttributesClassName != nil && *pv.Spec.VolumeAttributesClassName == target {
		// Made with this class: the PV says so, and the claim's status is
		// the binder's to set.
		return nil
	}
	logger := klog.FromContext(ctx).WithValues("pvc", klog.KObj(pvc), "pv", pv.Name, "class", target)
	class, err := a.Classes.Get(target)
	if apierrors.IsNotFound(err) {
		return a.setStatus(ctx, pvc, target, v1.PersistentVolumeClaimModifyVolumePending)
	}
	if err != nil {
		return err
	}
	if class.DriverName != a.Driver {
		msg := fmt.Sprintf("VolumeAttributesClass %s is for driver %s, not %s", target, class.DriverName, a.Driver)
		a.event(pvc, v1.EventTypeWarning, "VolumeModifyFailed", msg)
		return a.setStatus(ctx, pvc, target, v1.PersistentVolumeClaimModifyVolumeInfeasible, msg)
	}
	if ms == nil || ms.TargetVolumeAttributesClassName != target || ms.Status != v1.PersistentVolumeClaimModifyVolumeInProgress {
		if pvc, err = a.mark(ctx, pvc, target, v1.PersistentVolumeClaimModifyVolumeInProgress); err != nil {
			return err
		}
	}
	start := time.Now()
	_, err = a.CSI.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{
		VolumeId: pv.Spec.CSI.VolumeHandle, MutableParameters: classParameters(class.Parameters),
	})
	if err != nil {
		switch status.Code(err) {
		case codes.InvalidArgument, codes.NotFound, codes.OutOfRange:
			a.Observe.observe("modify", "infeasible", start)
			a.event(pvc, v1.EventTypeWarning, "VolumeModifyFailed", status.Convert(err).Message())
			logger.Info("Volume attributes refused", "err", err)
			if err := a.setStatus(ctx, pvc, target, v1.PersistentVolumeClaimModifyVolumeInfeasible, status.Convert(err).Message()); err != nil {
				return err
			}
			a.answer(pvc.UID, target)
			return nil
		case codes.Aborted:
			a.Observe.observe("modify", "in_progress", start)
		default:
			a.Observe.observe("modify", "error", start)
			a.event(pvc, v1.EventTypeWarning, "VolumeModifyFailed", status.Convert(err).Message())
		}
		return err
	}
	a.Observe.observe("modify", "success", start)
	if pv.Spec.VolumeAttributesClassName == nil || *pv.Spec.VolumeAttributesClassName != target {
		pv = pv.DeepCopy()
		pv.Spec.VolumeAttributesClassName = &target
		if _, err := a.Client.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	pvc = pvc.DeepCopy()
	pvc.Status.CurrentVolumeAttributesClassName = &target
	pvc.Status.ModifyVolumeStatus = nil
	removeCondition(pvc, v1.PersistentVolumeClaimVolumeModifyingVolume)
	removeCondition(pvc, v1.PersistentVolumeClaimVolumeModifyVolumeError)
	if _, err := a.patchStatus(ctx, pvc); err != nil {
		return err
	}
	a.answer(pvc.UID, target)
	a.event(pvc, v1.EventTypeNormal, "VolumeModifySuccessful", fmt.Sprintf("plinth applied VolumeAttributesClass %s", target))
	logger.V(2).Info("Volume attributes applied")
	return nil
}

// classParameters are a class's parameters as a modification: the CSI
// call changes only the keys it names, so a limit the class leaves out is
// named with 0 (none): the claim's new class is the whole of what holds,
// and an earlier class's limit does not outlive it.
func classParameters(params map[string]string) map[string]string {
	out := maps.Clone(params)
	if out == nil {
		out = map[string]string{}
	}
	for _, k := range []string{volume.ParamReadIOPS, volume.ParamWriteIOPS, volume.ParamReadBytesPerSecond, volume.ParamWriteBytesPerSecond} {
		if _, ok := out[k]; !ok {
			out[k] = "0"
		}
	}
	return out
}

// setStatus writes the claim's modifyVolumeStatus, when it differs.
func (a *Attributes) setStatus(ctx context.Context, pvc *v1.PersistentVolumeClaim, target string, s v1.PersistentVolumeClaimModifyVolumeStatus, msg ...string) error {
	_, err := a.mark(ctx, pvc, target, s, msg...)
	return err
}

// mark is setStatus returning the claim as written. Its conditions say
// the same, as the external-resizer's do: ModifyingVolume while in
// progress, ModifyVolumeError (with msg) once refused or failed.
func (a *Attributes) mark(ctx context.Context, pvc *v1.PersistentVolumeClaim, target string, s v1.PersistentVolumeClaimModifyVolumeStatus, msg ...string) (*v1.PersistentVolumeClaim, error) {
	cond, text := v1.PersistentVolumeClaimVolumeModifyingVolume, "ModifyVolume operation in progress."
	switch s {
	case v1.PersistentVolumeClaimModifyVolumeInfeasible:
		cond, text = v1.PersistentVolumeClaimVolumeModifyVolumeError, "ModifyVolume failed: "+strings.Join(msg, "; ")
	case v1.PersistentVolumeClaimModifyVolumePending:
		cond, text = v1.PersistentVolumeClaimVolumeModifyVolumeError, "VolumeAttributesClass "+target+" does not exist"
	}
	if ms := pvc.Status.ModifyVolumeStatus; ms != nil && ms.TargetVolumeAttributesClassName == target && ms.Status == s && hasCondition(pvc, cond) {
		return pvc, nil
	}
	pvc = pvc.DeepCopy()
	pvc.Status.ModifyVolumeStatus = &v1.ModifyVolumeStatus{TargetVolumeAttributesClassName: target, Status: s}
	removeCondition(pvc, v1.PersistentVolumeClaimVolumeModifyingVolume)
	removeCondition(pvc, v1.PersistentVolumeClaimVolumeModifyVolumeError)
	pvc.Status.Conditions = append(pvc.Status.Conditions, v1.PersistentVolumeClaimCondition{
		Type: cond, Status: v1.ConditionTrue, LastTransitionTime: metav1.Now(), Message: text,
	})
	return a.patchStatus(ctx, pvc)
}

// patchStatus writes the parts of the claim's status this controller owns
// as a merge patch of the status subresource that carries the
// resourceVersion it read: a claim changed since (its class named again,
// another controller's condition) is a conflict, tried again from the
// cache, and never a write of a stale spec or status.
func (a *Attributes) patchStatus(ctx context.Context, pvc *v1.PersistentVolumeClaim) (*v1.PersistentVolumeClaim, error) {
	conditions := pvc.Status.Conditions
	if conditions == nil {
		conditions = []v1.PersistentVolumeClaimCondition{}
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": pvc.ResourceVersion},
		"status": map[string]any{
			"modifyVolumeStatus":               pvc.Status.ModifyVolumeStatus,
			"currentVolumeAttributesClassName": pvc.Status.CurrentVolumeAttributesClassName,
			"conditions":                       conditions,
		},
	})
	if err != nil {
		return nil, err
	}
	return a.Client.CoreV1().PersistentVolumeClaims(pvc.Namespace).Patch(ctx, pvc.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
}

func (a *Attributes) answer(uid types.UID, target string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.answered[uid] = target
}

func (a *Attributes) wasAnswered(uid types.UID, target string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.answered[uid]
	if ok && t != target {
		// Another class is named now: an answer for this one later is
		// the answer to a new request, not a repeat.
		delete(a.answered, uid)
	}
	return ok && t == target
}

func hasCondition(pvc *v1.PersistentVolumeClaim, t v1.PersistentVolumeClaimConditionType) bool {
	for _, c := range pvc.Status.Conditions {
		if c.Type == t {
			return true
		}
	}
	return false
}

func (a *Attributes) event(pvc *v1.PersistentVolumeClaim, kind, reason, msg string) {
	if a.Events != nil {
		a.Events.Event(pvc, kind, reason, msg)
	}
}
