package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/test/e2e/cluster"
)

// The node agents' admission policy (deploy/base/admission.yaml,
// charts/plinth/templates/admission.yaml): requests of the plinth-node
// service account may write only the objects of the node its token is
// bound to.
const (
	nodeSA       = "system:serviceaccount:plinth-system:plinth-node"
	nodeNameKey  = "authentication.kubernetes.io/node-name"
	policyDenied = "ValidatingAdmissionPolicy 'plinth-node' with binding 'plinth-node' denied request"
)

// agentClients are clients that authenticate with a plinth-node token.
type agentClients struct {
	core   kubernetes.Interface
	plinth versioned.Interface
}

func tokenClients(t *testing.T, token string) agentClients {
	t.Helper()
	cfg := rest.AnonymousClientConfig(e.cfg)
	cfg.BearerToken = token
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return agentClients{core, pl}
}

// nodeScopedWrites: with a token bound to w1's plinth-node pod (as the
// kubelet projects into it), w1's agent cannot write w2's volume status,
// lift a finalizer of w2's volume, write w2's PlinthNode, delete w2's
// ResourceSlice or another driver's slice on w1, or change a volume's spec;
// its own node's writes go through; a plinth-node token bound to no node
// writes nothing. The test's objects carry no node label, so no plinth
// acts on them; they are removed (finalizers first) with the admin client.
func nodeScopedWrites(t *testing.T, ctx context.Context, ws []*cluster.Worker) {
	start := time.Now()
	w1, w2 := ws[0].Name, ws[1].Name
	admin := agentClients{e.client, e.plinth}

	// w1's plinth-node pod, and a token bound to it.
	pods, err := e.client.CoreV1().Pods("plinth-system").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + w1})
	if err != nil {
		t.Fatal(err)
	}
	var pod *metav1.ObjectMeta
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.ServiceAccountName == "plinth-node" && p.DeletionTimestamp == nil {
			pod = &p.ObjectMeta
		}
	}
	if pod == nil {
		t.Fatalf("no plinth-node pod on %s: %s", w1, podsOn(ctx, "plinth-system"))
	}
	tr, err := e.client.CoreV1().ServiceAccounts("plinth-system").CreateToken(ctx, "plinth-node", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: ptr[int64](600),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent := tokenClients(t, tr.Status.Token)
	// The API server puts the pod's node into the token's user info.
	rev, err := agent.core.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ui := rev.Status.UserInfo
	if ui.Username != nodeSA || !slices.Equal(ui.Extra[nodeNameKey], []string{w1}) {
		t.Fatalf("token bound to pod %s: user %q, extra %v; want %q with %s=[%s]", pod.Name, ui.Username, ui.Extra, nodeSA, nodeNameKey, w1)
	}
	logf("nodes: a token bound to %s's plinth-node pod %s authenticates as %s with %s=%v", w1, pod.Name, ui.Username, nodeNameKey, ui.Extra[nodeNameKey])

	// The objects: a volume on each worker, a plinth slice on w2, another
	// driver's slice on w1.
	vol := func(name, node string) *v1alpha1.PlinthVolume {
		return &v1alpha1.PlinthVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: []string{v1alpha1.Finalizer}},
			Spec:       v1alpha1.VolumeSpec{NodeName: node, Pool: "local", VolumeName: name, CapacityBytes: 1 << 20, Mode: "Filesystem", FsType: "ext4"},
		}
	}
	slice := func(name, node, drv string) *resourceapi.ResourceSlice {
		return &resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: resourceapi.ResourceSliceSpec{Driver: drv, NodeName: &node,
				Pool: resourceapi.ResourcePool{Name: name, Generation: 1, ResourceSliceCount: 1}},
		}
	}
	volW1, volW2 := "e2e-scope-"+w1, "e2e-scope-"+w2
	sliceW2, sliceOther, sliceW1 := "e2e-scope-plinth-"+w2, "e2e-scope-other-"+w1, "e2e-scope-plinth-"+w1
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
		defer ccancel()
		for _, name := range []string{volW1, volW2} {
			_, _ = e.plinth.PlinthV1alpha1().PlinthVolumes().Patch(cctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
			if err := e.plinth.PlinthV1alpha1().PlinthVolumes().Delete(cctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("cleanup: delete PlinthVolume %s: %v", name, err)
			}
		}
		for _, name := range []string{sliceW2, sliceOther, sliceW1} {
			if err := e.client.ResourceV1().ResourceSlices().Delete(cctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("cleanup: delete ResourceSlice %s: %v", name, err)
			}
		}
	})
	for _, v := range []*v1alpha1.PlinthVolume{vol(volW1, w1), vol(volW2, w2)} {
		if _, err := admin.plinth.PlinthV1alpha1().PlinthVolumes().Create(ctx, v, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*resourceapi.ResourceSlice{slice(sliceW2, w2, driver), slice(sliceOther, w1, "other.example.com")} {
		if _, err := admin.core.ResourceV1().ResourceSlices().Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// refused: the policy (403, its message) refuses what w1's agent tries.
	refused := func(what, want string, err error) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("w1's agent: %s: allowed", what)
		case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), policyDenied) || !strings.Contains(err.Error(), want):
			t.Errorf("w1's agent: %s: %v; want 403 from the policy, saying %q", what, err, want)
		default:
			logf("nodes: w1's agent: %s: refused (403): %v", what, err)
		}
	}
	allowed := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("w1's agent: %s: %v", what, err)
		} else {
			logf("nodes: w1's agent: %s: allowed", what)
		}
	}
	other := "may write only that node's objects"

	// w2's volume: status, finalizer.
	v2, err := admin.plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, volW2, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v2.Status = v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 1 << 20, Message: "forged by " + w1}
	_, err = agent.plinth.PlinthV1alpha1().PlinthVolumes().UpdateStatus(ctx, v2, metav1.UpdateOptions{})
	refused("update the status of "+w2+"'s PlinthVolume", "is on node '"+w2+"'", err)
	_, err = agent.plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, volW2, types.MergePatchType, []byte(`{"status":{"phase":"Ready"}}`), metav1.PatchOptions{}, "status")
	if !apierrors.IsForbidden(err) {
		t.Errorf("w1's agent: patch the status of %s's PlinthVolume: %v; want 403", w2, err)
	} else {
		logf("nodes: w1's agent: patch the status of %s's PlinthVolume: refused (403; RBAC grants only update on status): %v", w2, err)
	}
	_, err = agent.plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, volW2, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	refused("remove the finalizer of "+w2+"'s PlinthVolume", other, err)
	// w2's PlinthNode.
	if pn2, err := admin.plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, w2, metav1.GetOptions{}); err != nil {
		t.Error(err)
	} else {
		pn2.Status.Pools = nil
		_, err = agent.plinth.PlinthV1alpha1().PlinthNodes().UpdateStatus(ctx, pn2, metav1.UpdateOptions{})
		refused("update "+w2+"'s PlinthNode status", "is on node '"+w2+"'", err)
	}
	// Slices: w2's, another driver's on w1, a new one for w2.
	err = agent.core.ResourceV1().ResourceSlices().Delete(ctx, sliceW2, metav1.DeleteOptions{})
	refused("delete "+w2+"'s plinth ResourceSlice", "is on node '"+w2+"'", err)
	err = agent.core.ResourceV1().ResourceSlices().Delete(ctx, sliceOther, metav1.DeleteOptions{})
	refused("delete another driver's ResourceSlice on "+w1, "only the ResourceSlices of driver "+driver, err)
	_, err = agent.core.ResourceV1().ResourceSlices().Create(ctx, slice(sliceW1+"-for-w2", w2, driver), metav1.CreateOptions{})
	refused("create a plinth ResourceSlice for "+w2, "is on node '"+w2+"'", err)
	// w1's own volume: the spec and the node label stay the controller's.
	_, err = agent.plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, volW1, types.MergePatchType, []byte(`{"spec":{"capacityBytes":2097152}}`), metav1.PatchOptions{})
	refused("grow its own PlinthVolume's spec.capacityBytes", "may not change the spec", err)
	_, err = agent.plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, volW1, types.MergePatchType, []byte(`{"metadata":{"labels":{"`+v1alpha1.LabelNode+`":"`+w2+`"}}}`), metav1.PatchOptions{})
	refused("label its own PlinthVolume for "+w2, "may not change the spec", err)

	// What w1's agent does on its own node goes through.
	_, err = agent.plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, volW1, types.MergePatchType, []byte(`{"metadata":{"annotations":{"e2e.plinth.example.com/touched-by":"`+w1+`"}}}`), metav1.PatchOptions{})
	allowed("annotate its own PlinthVolume", err)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		v1, err := admin.plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, volW1, metav1.GetOptions{})
		if err != nil {
			return err
		}
		v1.Status = v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 1 << 20, Message: "written with " + w1 + "'s agent token"}
		_, err = agent.plinth.PlinthV1alpha1().PlinthVolumes().UpdateStatus(ctx, v1, metav1.UpdateOptions{})
		return err
	})
	allowed("update its own PlinthVolume's status", err)
	_, err = agent.plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, volW1, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	allowed("remove its own PlinthVolume's finalizer", err)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pn1, err := admin.plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, w1, metav1.GetOptions{})
		if err != nil {
			return err
		}
		_, err = agent.plinth.PlinthV1alpha1().PlinthNodes().UpdateStatus(ctx, pn1, metav1.UpdateOptions{})
		return err
	})
	allowed("update its own PlinthNode's status", err)
	s1, err := agent.core.ResourceV1().ResourceSlices().Create(ctx, slice(sliceW1, w1, driver), metav1.CreateOptions{})
	allowed("create a plinth ResourceSlice for "+w1, err)
	if err == nil {
		s1.Spec.Pool.Generation++
		_, err = agent.core.ResourceV1().ResourceSlices().Update(ctx, s1, metav1.UpdateOptions{})
		allowed("update its own plinth ResourceSlice", err)
		err = agent.core.ResourceV1().ResourceSlices().Delete(ctx, sliceW1, metav1.DeleteOptions{})
		allowed("delete its own plinth ResourceSlice", err)
	}

	// A plinth-node token bound to no pod names no node: it writes nothing.
	tr, err = e.client.CoreV1().ServiceAccounts("plinth-system").CreateToken(ctx, "plinth-node", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: ptr[int64](600),
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unbound := tokenClients(t, tr.Status.Token)
	_, err = unbound.plinth.PlinthV1alpha1().PlinthVolumes().Patch(ctx, volW1, types.MergePatchType, []byte(`{"metadata":{"annotations":{"e2e.plinth.example.com/touched-by":"nobody"}}}`), metav1.PatchOptions{})
	if err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), policyDenied) || !strings.Contains(err.Error(), "names no node") {
		t.Errorf("a plinth-node token bound to no pod: annotate %s's PlinthVolume: %v; want 403 from the policy, saying the token names no node", w1, err)
	} else {
		logf("nodes: a plinth-node token bound to no pod: annotate %s's PlinthVolume: refused (403): %v", w1, err)
	}
	logf("nodes: node-scoped writes checked in %s", time.Since(start).Round(time.Millisecond))
}
