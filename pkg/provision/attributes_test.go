package provision

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// modifyCall is one ControllerModifyVolume the controller made, with what
// the claim said in the API at that moment.
type modifyCall struct {
	Handle string
	Params map[string]string
	// Claim's status.modifyVolumeStatus when the call came (nil: none),
	// and its conditions' types.
	Status     *v1.ModifyVolumeStatus
	Conditions []v1.PersistentVolumeClaimConditionType
}

// fakeModifier is the CSI ControllerServer as the controller sees it: it
// records each call and answers what answer says (nil: OK).
type fakeModifier struct {
	// claimOf names the claim whose status a call for a handle records.
	claimOf func(handle string) (ns, name string)
	client  *fake.Clientset
	answer  func(n int, req *csi.ControllerModifyVolumeRequest) error

	mu    sync.Mutex
	calls []modifyCall
}

func (f *fakeModifier) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	call := modifyCall{Handle: req.GetVolumeId(), Params: maps.Clone(req.GetMutableParameters())}
	if f.claimOf != nil {
		if ns, name := f.claimOf(req.GetVolumeId()); name != "" {
			if pvc, err := f.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
				if pvc.Status.ModifyVolumeStatus != nil {
					ms := *pvc.Status.ModifyVolumeStatus
					call.Status = &ms
				}
				for _, c := range pvc.Status.Conditions {
					call.Conditions = append(call.Conditions, c.Type)
				}
			}
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, call)
	n := 0
	for _, c := range f.calls {
		if c.Handle == req.GetVolumeId() {
			n++
		}
	}
	f.mu.Unlock()
	if f.answer != nil {
		if err := f.answer(n, req); err != nil {
			return nil, err
		}
	}
	return &csi.ControllerModifyVolumeResponse{}, nil
}

// callsFor are the calls for volume handle, in order.
func (f *fakeModifier) callsFor(handle string) []modifyCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []modifyCall
	for _, c := range f.calls {
		if c.Handle == handle {
			out = append(out, c)
		}
	}
	return out
}

// events collects what an EventRecorder was told.
type recordedEvents struct {
	mu  sync.Mutex
	all []string
}

func (e *recordedEvents) has(kind, reason, substr string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.all {
		if strings.HasPrefix(s, kind+" "+reason+" ") && strings.Contains(s, substr) {
			return true
		}
	}
	return false
}

func (e *recordedEvents) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.all, "\n")
}

// attributesRun is an Attributes controller running over a fake API server
// with real informers.
type attributesRun struct {
	client *fake.Clientset
	csi    *fakeModifier
	events *recordedEvents
	pvs    corelisters.PersistentVolumeLister
	nextID int
}

// runAttributes starts the controller over a fake API server holding objs;
// the claims' volumes' handles are mapped to their claims for the fake
// Modifier. answer may be nil.
func runAttributes(t *testing.T, answer func(n int, req *csi.ControllerModifyVolumeRequest) error, objs ...runtime.Object) *attributesRun {
	t.Helper()
	client := fake.NewClientset(objs...)
	mod := &fakeModifier{client: client, answer: answer}
	factory := informers.NewSharedInformerFactory(client, 0)
	claims := factory.Core().V1().PersistentVolumeClaims().Informer()
	pvs := factory.Core().V1().PersistentVolumes()
	classes := factory.Storage().V1().VolumeAttributesClasses()
	pvInformer, classInformer := pvs.Informer(), classes.Informer()
	// The handle of a PV names its claim (through the PV's claimRef).
	mod.claimOf = func(handle string) (string, string) {
		for _, obj := range pvInformer.GetStore().List() {
			if pv := obj.(*v1.PersistentVolume); pv.Spec.CSI != nil && pv.Spec.CSI.VolumeHandle == handle && pv.Spec.ClaimRef != nil {
				return pv.Spec.ClaimRef.Namespace, pv.Spec.ClaimRef.Name
			}
		}
		return "", ""
	}
	recorder := record.NewFakeRecorder(1000)
	ev := &recordedEvents{}
	ctx, cancel := context.WithCancel(context.Background())
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			select {
			case s := <-recorder.Events:
				ev.mu.Lock()
				ev.all = append(ev.all, s)
				ev.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), claims.HasSynced, pvInformer.HasSynced, classInformer.HasSynced) {
		t.Fatal("caches did not sync")
	}
	a := &Attributes{Client: client, Claims: claims, Volumes: pvs.Lister(), Classes: classes.Lister(), ClassInformer: classInformer,
		CSI: mod, Driver: driverName, Events: recorder}
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
		<-drained
		factory.Shutdown()
	})
	return &attributesRun{client: client, csi: mod, events: ev, pvs: pvs.Lister()}
}

// claimOn is PVC ns/name bound to PV pv-<name> (volume handle h-<name>) of
// driver; class is the class it names (nil: none), current the class its
// status says is applied and the PV records.
func claimOn(name, driver string, class, current *string) (*v1.PersistentVolumeClaim, *v1.PersistentVolume) {
	pvc, pv := boundClaim("ns", name, "pv-"+name, driver, "h-"+name, 1<<30)
	pvc.Spec.VolumeAttributesClassName = class
	pvc.Status.CurrentVolumeAttributesClassName = current
	pv.Spec.VolumeAttributesClassName = current
	return pvc, pv
}

var (
	vacSilver = attributesClass("silver", driverName, map[string]string{"readIOPS": "100", "writeIOPS": "50"})
	vacGold   = attributesClass("gold", driverName, map[string]string{"readIOPS": "1000", "writeIOPS": "500", "writeBytesPerSecond": "100Mi"})
)

// waitFor polls cond until it holds or 15 seconds pass.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after 15s: %s", what, detail)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *attributesRun) claim(t *testing.T, name string) *v1.PersistentVolumeClaim {
	t.Helper()
	pvc, err := r.client.CoreV1().PersistentVolumeClaims("ns").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pvc
}

func (r *attributesRun) pv(t *testing.T, name string) *v1.PersistentVolume {
	t.Helper()
	pv, err := r.client.CoreV1().PersistentVolumes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pv
}

func className(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func describeClaim(pvc *v1.PersistentVolumeClaim) string {
	b, _ := json.Marshal(pvc.Status)
	return fmt.Sprintf("spec.volumeAttributesClassName %s, status %s", className(pvc.Spec.VolumeAttributesClassName), b)
}

// waitApplied waits until claim name says class is applied: current is
// class and no modifyVolumeStatus, and its PV records class.
func (r *attributesRun) waitApplied(t *testing.T, name, class string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("claim %s has class %s", name, class), func() (bool, string) {
		pvc := r.claim(t, name)
		pv := r.pv(t, "pv-"+name)
		ok := className(pvc.Status.CurrentVolumeAttributesClassName) == class && pvc.Status.ModifyVolumeStatus == nil &&
			className(pv.Spec.VolumeAttributesClassName) == class
		return ok, describeClaim(pvc) + ", PV's class " + className(pv.Spec.VolumeAttributesClassName)
	})
}

// waitStatus waits until claim name's modifyVolumeStatus is target, s.
func (r *attributesRun) waitStatus(t *testing.T, name, target string, s v1.PersistentVolumeClaimModifyVolumeStatus) {
	t.Helper()
	want := v1.ModifyVolumeStatus{TargetVolumeAttributesClassName: target, Status: s}
	waitFor(t, fmt.Sprintf("claim %s is %s for %s", name, s, target), func() (bool, string) {
		pvc := r.claim(t, name)
		return pvc.Status.ModifyVolumeStatus != nil && *pvc.Status.ModifyVolumeStatus == want, describeClaim(pvc)
	})
}

// waitEvent waits for an event of kind and reason whose message has substr.
func (r *attributesRun) waitEvent(t *testing.T, kind, reason, substr string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("a %s %s event with %q", kind, reason, substr), func() (bool, string) {
		return r.events.has(kind, reason, substr), "events:\n" + r.events.String()
	})
}

// create makes objects through the API, as a user would.
func (r *attributesRun) create(t *testing.T, objs ...runtime.Object) {
	t.Helper()
	ctx := context.Background()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *v1.PersistentVolumeClaim:
			_, err = r.client.CoreV1().PersistentVolumeClaims(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *v1.PersistentVolume:
			_, err = r.client.CoreV1().PersistentVolumes().Create(ctx, o, metav1.CreateOptions{})
			// The controller reads PVs from its informer: a PV is there
			// before its claim's events come (as it is in a cluster,
			// where the PV exists before the claim binds to it).
			if err == nil {
				waitFor(t, "PV "+o.Name+" in the informer", func() (bool, string) { _, err := r.pvs.Get(o.Name); return err == nil, fmt.Sprint(err) })
			}
		case *storagev1.VolumeAttributesClass:
			_, err = r.client.StorageV1().VolumeAttributesClasses().Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("create %T", o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// patchClaim merge-patches claim name (spec or metadata), as kubectl does.
func (r *attributesRun) patchClaim(t *testing.T, name, patch string) {
	t.Helper()
	if _, err := r.client.CoreV1().PersistentVolumeClaims("ns").Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// settle returns once the controller has handled every claim event that
// came before it: a fresh claim changing class, created now, is applied
// (the controller handles claims in the order their events come).
func (r *attributesRun) settle(t *testing.T) {
	t.Helper()
	r.nextID++
	name := fmt.Sprintf("zz-sentinel-%d", r.nextID)
	pvc, pv := claimOn(name, driverName, ptr("silver"), nil)
	r.create(t, pv, pvc)
	r.waitApplied(t, name, "silver")
}

// A bound claim that names another class: the controller marks it
// InProgress for that class, calls ControllerModifyVolume with the class's
// parameters, then records the class on the PV and as the claim's current
// class, clears modifyVolumeStatus and says so in a Normal event.
func TestAttributesAppliesClassChange(t *testing.T) {
	pvc, pv := claimOn("data", driverName, ptr("gold"), ptr("silver"))
	r := runAttributes(t, nil, vacSilver, vacGold, pvc, pv)
	r.waitApplied(t, "data", "gold")
	r.settle(t)
	calls := r.csi.callsFor("h-data")
	if len(calls) != 1 {
		t.Fatalf("%d ControllerModifyVolume calls for one class change, want 1", len(calls))
	}
	for _, c := range calls {
		if d := cmp.Diff(asModification(vacGold.Parameters), c.Params); d != "" {
			t.Errorf("call's mutable_parameters (-class +call):\n%s", d)
		}
	}
	// The claim says InProgress for gold before plinth is asked.
	if want := (&v1.ModifyVolumeStatus{TargetVolumeAttributesClassName: "gold", Status: v1.PersistentVolumeClaimModifyVolumeInProgress}); !cmp.Equal(want, calls[0].Status) {
		t.Errorf("the claim's modifyVolumeStatus during the call: %+v, want %+v", calls[0].Status, want)
	}
	// ... with the condition the external-resizer sets meanwhile.
	if !slices.Contains(calls[0].Conditions, v1.PersistentVolumeClaimVolumeModifyingVolume) {
		t.Errorf("the claim's conditions during the call: %v, want ModifyingVolume", calls[0].Conditions)
	}
	for _, c := range r.claim(t, "data").Status.Conditions {
		if c.Type == v1.PersistentVolumeClaimVolumeModifyingVolume || c.Type == v1.PersistentVolumeClaimVolumeModifyVolumeError {
			t.Errorf("condition left on the claim once gold was applied: %+v", c)
		}
	}
	// More calls are allowed (ControllerModifyVolume is idempotent), and
	// noted: the controller's cache of the claim lags its own writes.
	for i, c := range calls[1:] {
		t.Logf("call %d of %d, the claim's modifyVolumeStatus then: %+v", i+2, len(calls), c.Status)
	}
	r.waitEvent(t, v1.EventTypeNormal, "VolumeModifySuccessful", "gold")
	if strings.Contains("\n"+r.events.String(), "\n"+v1.EventTypeWarning+" ") {
		t.Errorf("warnings for a change that succeeded:\n%s", r.events)
	}
}

// A class that does not exist yet: the claim is Pending for it, nothing is
// called; once the class is created, it is applied.
func TestAttributesPendingUntilClassExists(t *testing.T) {
	pvc, pv := claimOn("data", driverName, ptr("gold"), ptr("silver"))
	r := runAttributes(t, nil, vacSilver, pvc, pv)
	r.waitStatus(t, "data", "gold", v1.PersistentVolumeClaimModifyVolumePending)
	if calls := r.csi.callsFor("h-data"); len(calls) != 0 {
		t.Errorf("calls for a class that does not exist: %+v", calls)
	}
	if got := r.claim(t, "data").Status.CurrentVolumeAttributesClassName; className(got) != "silver" {
		t.Errorf("current class while Pending: %s, want silver", className(got))
	}
	r.create(t, vacGold)
	r.waitApplied(t, "data", "gold")
	for _, c := range r.csi.callsFor("h-data") {
		if d := cmp.Diff(asModification(vacGold.Parameters), c.Params); d != "" {
			t.Errorf("call's mutable_parameters (-class +call):\n%s", d)
		}
	}
}

// A class of another driver: Infeasible, with a Warning event, and plinth's
// ControllerModifyVolume is never called; the volume keeps its class.
func TestAttributesOtherDriversClassInfeasible(t *testing.T) {
	foreign := attributesClass("io2", "ebs.csi.aws.com", map[string]string{"iops": "3000"})
	pvc, pv := claimOn("data", driverName, ptr("io2"), ptr("silver"))
	r := runAttributes(t, nil, vacSilver, foreign, pvc, pv)
	r.waitStatus(t, "data", "io2", v1.PersistentVolumeClaimModifyVolumeInfeasible)
	r.waitEvent(t, v1.EventTypeWarning, "VolumeModifyFailed", "io2")
	r.settle(t)
	if calls := r.csi.callsFor("h-data"); len(calls) != 0 {
		t.Errorf("ControllerModifyVolume called with another driver's class: %+v", calls)
	}
	if got := r.claim(t, "data").Status.CurrentVolumeAttributesClassName; className(got) != "silver" {
		t.Errorf("current class: %s, want silver", className(got))
	}
	if got := r.pv(t, "pv-data").Spec.VolumeAttributesClassName; className(got) != "silver" {
		t.Errorf("PV's class: %s, want silver", className(got))
	}
}

// refuseUnknownKeys answers as plinth's ControllerModifyVolume does for a
// key it does not know: INVALID_ARGUMENT naming it.
func refuseUnknownKeys(_ int, req *csi.ControllerModifyVolumeRequest) error {
	for k := range req.GetMutableParameters() {
		if strings.HasPrefix(k, "XXX_") {
			return status.Errorf(codes.InvalidArgument, "invalid argument: unknown mutable parameter %q", k)
		}
	}
	return nil
}

var vacBogus = attributesClass("bogus", driverName, map[string]string{"XXX_FakeKey": "1", "readIOPS": "5"})

// A class the volume cannot take (ControllerModifyVolume answers
// INVALID_ARGUMENT): Infeasible, with a Warning event giving the plugin's
// reason; other changes to the claim do not call again, naming another
// class does.
func TestAttributesInvalidArgumentInfeasible(t *testing.T) {
	pvc, pv := claimOn("data", driverName, ptr("bogus"), ptr("silver"))
	r := runAttributes(t, refuseUnknownKeys, vacSilver, vacGold, vacBogus, pvc, pv)
	r.waitStatus(t, "data", "bogus", v1.PersistentVolumeClaimModifyVolumeInfeasible)
	r.waitEvent(t, v1.EventTypeWarning, "VolumeModifyFailed", "XXX_FakeKey")
	r.settle(t)
	refused := len(r.csi.callsFor("h-data"))
	if refused == 0 {
		t.Fatal("Infeasible without a ControllerModifyVolume call")
	}
	if refused > 1 {
		// The controller's cache of the claim lags its own writes; a
		// second call for the same class repeats the Warning event.
		t.Errorf("%d ControllerModifyVolume calls for one class, want 1; events:\n%s", refused, r.events)
	}

	// Any other change of the claim: no new call, still Infeasible.
	r.patchClaim(t, "data", `{"metadata":{"labels":{"team":"a"}}}`)
	r.patchClaim(t, "data", `{"metadata":{"annotations":{"note":"b"}}}`)
	r.settle(t)
	if n := len(r.csi.callsFor("h-data")); n != refused {
		t.Errorf("%d calls after label and annotation changes of an Infeasible claim, want %d", n-refused, 0)
	}
	pvcNow := r.claim(t, "data")
	if ms := pvcNow.Status.ModifyVolumeStatus; ms == nil || ms.Status != v1.PersistentVolumeClaimModifyVolumeInfeasible || className(pvcNow.Status.CurrentVolumeAttributesClassName) != "silver" {
		t.Errorf("after the label change: %s; want still Infeasible for bogus, silver current", describeClaim(pvcNow))
	}
	if got := r.pv(t, "pv-data").Spec.VolumeAttributesClassName; className(got) != "silver" {
		t.Errorf("PV's class after the refusal: %s, want silver", className(got))
	}

	// A third class: tried, and applied.
	r.patchClaim(t, "data", `{"spec":{"volumeAttributesClassName":"gold"}}`)
	r.waitApplied(t, "data", "gold")
	calls := r.csi.callsFor("h-data")
	if len(calls) == refused {
		t.Fatal("gold applied without a call")
	}
	if d := cmp.Diff(asModification(vacGold.Parameters), calls[len(calls)-1].Params); d != "" {
		t.Errorf("last call's mutable_parameters (-gold +call):\n%s", d)
	}
}

// docs/volume-attributes.md: an Infeasible change is told by "a
// ModifyVolumeError condition and a VolumeModifyFailed event" giving the
// reason (the claim condition the external-resizer sets, type
// ModifyVolumeError); applying a class afterwards removes it.
func TestAttributesInfeasibleCondition(t *testing.T) {
	pvc, pv := claimOn("data", driverName, ptr("bogus"), ptr("silver"))
	r := runAttributes(t, refuseUnknownKeys, vacSilver, vacGold, vacBogus, pvc, pv)
	r.waitStatus(t, "data", "bogus", v1.PersistentVolumeClaimModifyVolumeInfeasible)
	var cond *v1.PersistentVolumeClaimCondition
	for _, c := range r.claim(t, "data").Status.Conditions {
		if c.Type == v1.PersistentVolumeClaimVolumeModifyVolumeError {
			cond = &c
		}
	}
	if cond == nil || cond.Status != v1.ConditionTrue || !strings.Contains(cond.Message, "XXX_FakeKey") {
		t.Errorf("Infeasible claim's ModifyVolumeError condition: %+v; want True, naming XXX_FakeKey", cond)
	}
	r.patchClaim(t, "data", `{"spec":{"volumeAttributesClassName":"gold"}}`)
	r.waitApplied(t, "data", "gold")
	for _, c := range r.claim(t, "data").Status.Conditions {
		if c.Type == v1.PersistentVolumeClaimVolumeModifyVolumeError {
			t.Errorf("condition left after gold was applied: %+v", c)
		}
	}
}

// NOT_FOUND and OUT_OF_RANGE are final too: Infeasible, no retry.
func TestAttributesFinalCodesInfeasible(t *testing.T) {
	for _, code := range []codes.Code{codes.NotFound, codes.OutOfRange} {
		t.Run(code.String(), func(t *testing.T) {
			pvc, pv := claimOn("data", driverName, ptr("gold"), ptr("silver"))
			r := runAttributes(t, func(int, *csi.ControllerModifyVolumeRequest) error { return status.Error(code, "refused") }, vacSilver, vacGold, pvc, pv)
			r.waitStatus(t, "data", "gold", v1.PersistentVolumeClaimModifyVolumeInfeasible)
			r.waitEvent(t, v1.EventTypeWarning, "VolumeModifyFailed", "refused")
		})
	}
}

// ABORTED (an operation on the volume is in progress) and UNAVAILABLE are
// not final: the claim stays InProgress and the call is made again until it
// succeeds.
func TestAttributesRetriedUntilSuccess(t *testing.T) {
	answers := map[int]error{
		1: status.Error(codes.Aborted, "an operation on the volume is in progress"),
		2: status.Error(codes.Unavailable, "connection refused"),
	}
	pvc, pv := claimOn("data", driverName, ptr("gold"), ptr("silver"))
	r := runAttributes(t, func(n int, _ *csi.ControllerModifyVolumeRequest) error { return answers[n] }, vacSilver, vacGold, pvc, pv)
	r.waitApplied(t, "data", "gold")
	calls := r.csi.callsFor("h-data")
	if len(calls) < 3 {
		t.Fatalf("%d calls, want the two refused and one that succeeded", len(calls))
	}
	for i, c := range calls {
		if d := cmp.Diff(asModification(vacGold.Parameters), c.Params); d != "" {
			t.Errorf("call %d's mutable_parameters (-gold +call):\n%s", i+1, d)
		}
	}
	// Never Infeasible on the way.
	for _, a := range r.client.Actions() {
		u, ok := a.(interface{ GetObject() runtime.Object })
		if !ok || a.GetResource().Resource != "persistentvolumeclaims" {
			continue
		}
		if pvc, ok := u.GetObject().(*v1.PersistentVolumeClaim); ok && pvc.Status.ModifyVolumeStatus != nil &&
			pvc.Status.ModifyVolumeStatus.Status == v1.PersistentVolumeClaimModifyVolumeInfeasible {
			t.Errorf("claim written Infeasible for a retryable error: %s", describeClaim(pvc))
		}
	}
}

// What the controller leaves alone: a claim not bound yet, a claim whose
// PV is another driver's, a claim made with its class (the PV records it;
// the binder sets the claim's current class), a claim whose class is
// applied, and a claim that names the empty class (the API: "an empty
// string value means that no VolumeAttributesClass will be applied").
func TestAttributesIgnores(t *testing.T) {
	unbound := &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "unbound"},
		Spec: v1.PersistentVolumeClaimSpec{VolumeAttributesClassName: ptr("gold")}, Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimPending}}
	foreignPVC, foreignPV := claimOn("foreign", "ebs.csi.aws.com", ptr("gold"), ptr("silver"))
	madePVC, madePV := claimOn("made", driverName, ptr("gold"), nil)
	madePV.Spec.VolumeAttributesClassName = ptr("gold")
	appliedPVC, appliedPV := claimOn("applied", driverName, ptr("gold"), ptr("gold"))
	emptyPVC, emptyPV := claimOn("empty", driverName, ptr(""), nil)

	r := runAttributes(t, nil, vacSilver, vacGold)
	// Created after the controller started, so that their events come
	// before settle's.
	r.create(t, foreignPV, madePV, appliedPV, emptyPV)
	r.create(t, unbound, foreignPVC, madePVC, appliedPVC, emptyPVC)
	r.settle(t)

	for _, name := range []string{"unbound", "foreign", "made", "applied", "empty"} {
		if calls := r.csi.callsFor("h-" + name); len(calls) != 0 {
			t.Errorf("%s: ControllerModifyVolume called: %+v", name, calls)
		}
	}
	want := map[string]*v1.PersistentVolumeClaim{"unbound": unbound, "foreign": foreignPVC, "made": madePVC, "applied": appliedPVC, "empty": emptyPVC}
	for name, orig := range want {
		if d := cmp.Diff(orig.Status, r.claim(t, name).Status); d != "" {
			t.Errorf("%s: claim status written (-before +after):\n%s", name, d)
		}
	}
	for _, pv := range []*v1.PersistentVolume{foreignPV, madePV, appliedPV, emptyPV} {
		if d := cmp.Diff(pv.Spec, r.pv(t, pv.Name).Spec); d != "" {
			t.Errorf("PV %s written (-before +after):\n%s", pv.Name, d)
		}
	}
}

// asModification is what ControllerModifyVolume is asked for a claim's
// new class: its parameters, and 0 for each IO limit it leaves out (the
// CSI call changes only the keys it names, so an earlier class's limit
// is named to be lifted).
func asModification(class map[string]string) map[string]string {
	out := map[string]string{"readIOPS": "0", "writeIOPS": "0", "readBytesPerSecond": "0", "writeBytesPerSecond": "0"}
	for k, v := range class {
		out[k] = v
	}
	return out
}
