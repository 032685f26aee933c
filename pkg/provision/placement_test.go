package provision

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	typedv1alpha1 "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/typed/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// nodeWriter is the API client the controller writes volume objects
// through, with a hook before each volume object's create: a test can hold
// or slow the write (the fake client serialises every call it serves, so
// the hook sits outside it), and answer as the volume's node would.
type nodeWriter struct {
	versioned.Interface
	before func(v *v1alpha1.PlinthVolume)
}

func (w nodeWriter) PlinthV1alpha1() typedv1alpha1.PlinthV1alpha1Interface {
	return hookedGroup{w.Interface.PlinthV1alpha1(), w.before}
}

type hookedGroup struct {
	typedv1alpha1.PlinthV1alpha1Interface
	before func(v *v1alpha1.PlinthVolume)
}

func (g hookedGroup) PlinthVolumes() typedv1alpha1.PlinthVolumeInterface {
	return hookedVolumes{g.PlinthV1alpha1Interface.PlinthVolumes(), g.before}
}

type hookedVolumes struct {
	typedv1alpha1.PlinthVolumeInterface
	before func(v *v1alpha1.PlinthVolume)
}

func (r hookedVolumes) Create(ctx context.Context, v *v1alpha1.PlinthVolume, opts metav1.CreateOptions) (*v1alpha1.PlinthVolume, error) {
	r.before(v)
	return r.PlinthVolumeInterface.Create(ctx, v, opts)
}

// markReady answers a volume object as its node would once the volume is
// made: Ready with the capacity asked.
func markReady(v *v1alpha1.PlinthVolume) {
	v.Status.Phase, v.Status.CapacityBytes = v1alpha1.VolumeReady, v.Spec.CapacityBytes
}

func withHook(before func(v *v1alpha1.PlinthVolume)) func(versioned.Interface) versioned.Interface {
	return func(c versioned.Interface) versioned.Interface { return nodeWriter{c, before} }
}

func claimOf(size string) *v1.PersistentVolumeClaim {
	return &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c", UID: "uid-c"},
		Spec: v1.PersistentVolumeClaimSpec{AccessModes: []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce},
			Resources: v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse(size)}}}}
}

// Immediate binding with allowedTopologies over two nodes of two pools
// each, where only one node has a single pool that holds the volume: it
// lands there. old: createAmong ranked the nodes by the sum of their pools
// (n1: 100Mi < n2: 120Mi), chose n1, whose pools hold 50Mi each, and
// answered a final ResourceExhausted on every retry. When no single pool
// fits anywhere, the error is ErrNoSpace naming each node's largest pool
// (old: the last pool tried only).
func TestImmediateAllowedTopologiesLandsWhereOnePoolFits(t *testing.T) {
	const key = "topology.plinth.example.com/node"
	nodes := []runtime.Object{
		plinthNode("n1", poolStatus("a", 50*mi), poolStatus("b", 50*mi)),
		plinthNode("n2", poolStatus("a", 90*mi), poolStatus("b", 30*mi)),
		plinthNode("n3", poolStatus("a", 200*mi)), // outside allowedTopologies
	}
	c, _ := fakeClusterOf(t, nodes, withHook(markReady), nil)
	p := &Provisioner{Driver: "plinth.example.com", TopologyKey: key, Controller: volume.NewControllerOver(c)}
	immediate := storagev1.VolumeBindingImmediate
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: "plinth.example.com",
		VolumeBindingMode: &immediate,
		AllowedTopologies: []v1.TopologySelectorTerm{{MatchLabelExpressions: []v1.TopologySelectorLabelRequirement{{Key: key, Values: []string{"n1", "n2"}}}}}}
	block := v1.PersistentVolumeBlock

	cases := map[string]struct {
		size      string
		wantNode  string
		wantPool  string
		wantErr   error
		wantState controller.ProvisioningState
		errHas    []string
		old       string
	}{
		"one node's single pool fits": {size: "80Mi", wantNode: "n2", wantPool: "a", wantState: controller.ProvisioningFinished,
			old: "n1 chosen by summed pools: final ResourceExhausted"},
		"several fit: best fit": {size: "25Mi", wantNode: "n2", wantPool: "b", wantState: controller.ProvisioningFinished,
			old: "n1 (smaller sum), pool a"},
		"none fits": {size: "95Mi", wantErr: pool.ErrNoSpace, wantState: controller.ProvisioningFinished,
			errHas: []string{"largest pool a on node n1 has 50MiB allocatable, 95MiB requested", "largest pool a on node n2 has 90MiB allocatable, 95MiB requested"},
			old:    "one pool of n1 only, the node createAmong chose"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			claim := claimOf(tc.size)
			claim.Spec.VolumeMode = &block
			pv, state, err := p.Provision(context.Background(), controller.ProvisionOptions{StorageClass: sc, PVName: "pvc-" + strings.ReplaceAll(name, " ", "-"), PVC: claim})
			if state != tc.wantState {
				t.Errorf("state %s, want %s (old: %s)", state, tc.wantState, tc.old)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v (old: %s)", err, tc.wantErr, tc.old)
				}
				for _, s := range tc.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not say %q (old: %s)", err, s, tc.old)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("%v (old: %s)", err, tc.old)
			}
			node := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0]
			if node != tc.wantNode || pv.Spec.CSI.VolumeAttributes["plinth.example.com/pool"] != tc.wantPool {
				t.Fatalf("placed on %s/%s, want %s/%s (old: %s)", node, pv.Spec.CSI.VolumeAttributes["plinth.example.com/pool"], tc.wantNode, tc.wantPool, tc.old)
			}
		})
	}
}

// Creates on two nodes at once: each node promises its bytes once (room
// for two per node, five asked on each: two recorded and three refused on
// each node), and neither node's creates wait on the other's.
func TestReservationPerNodeInParallel(t *testing.T) {
	nodes := []runtime.Object{plinthNode("n1", poolStatus("fast", 100*mi)), plinthNode("n2", poolStatus("fast", 100*mi))}
	c, _ := fakeClusterOf(t, nodes, nil, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	type answer struct {
		node string
		err  error
	}
	answers := make(chan answer, 10)
	for _, node := range []string{"n1", "n2"} {
		n, _ := c.Node(node)
		for i := range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := n.CreateVolume(ctx, "fast", pool.Volume{ID: fmt.Sprintf("pv-%s-%d", node, i), Name: "v", CapacityBytes: 40 * mi, Mode: pool.ModeBlock})
				answers <- answer{node, err}
			}()
		}
	}
	wg.Wait()
	close(answers)
	recorded, refused := map[string]int{}, map[string]int{}
	for a := range answers {
		switch {
		case errors.Is(a.err, ErrInProgress):
			recorded[a.node]++
		case errors.Is(a.err, pool.ErrNoSpace):
			refused[a.node]++
		default:
			t.Errorf("%s: unexpected answer %v", a.node, a.err)
		}
	}
	for _, node := range []string{"n1", "n2"} {
		if recorded[node] != 2 || refused[node] != 3 {
			t.Errorf("node %s: %d recorded, %d refused; want 2 and 3", node, recorded[node], refused[node])
		}
		n, _ := c.Node(node)
		infos, err := n.Pools(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := infos[0].Stats.AllocatableBytes(); got != 20*mi {
			t.Errorf("node %s: allocatable with two reservations %s, want 20Mi", node, volume.FormatBytes(got))
		}
	}
}

// A create whose API write hangs holds up no other create: not another
// node's (old: one lock for every node, held across the write, so n2
// waited for n1's write) and not its own node's next one, whose capacity
// check already counts the hanging create's reservation.
func TestCreateLockNotHeldAcrossTheWrite(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(v *v1alpha1.PlinthVolume) {
		if v.Name == "pv-hang" {
			once.Do(func() { close(entered) })
			<-release
		}
		if v.Labels[v1alpha1.LabelNode] == "n2" {
			markReady(v)
		} // n1's stay Pending: their reservations keep counting
	}
	nodes := []runtime.Object{plinthNode("n1", poolStatus("fast", 100*mi)), plinthNode("n2", poolStatus("fast", 100*mi))}
	c, _ := fakeClusterOf(t, nodes, withHook(hook), nil)
	ctx := context.Background()
	n1, _ := c.Node("n1")
	n2, _ := c.Node("n2")
	hung := make(chan error, 1)
	go func() {
		_, err := n1.CreateVolume(ctx, "fast", pool.Volume{ID: "pv-hang", Name: "hang", CapacityBytes: 60 * mi, Mode: pool.ModeBlock})
		hung <- err
	}()
	<-entered
	defer close(release)

	for _, tc := range []struct {
		node  volume.Node
		id    string
		bytes int64
		want  error
	}{
		{n2, "pv-other-node", 60 * mi, nil},
		{n1, "pv-same-node-fits", 30 * mi, ErrInProgress},      // recorded; n1 does not answer here
		{n1, "pv-same-node-too-big", 30 * mi, pool.ErrNoSpace}, // 100 - 60 (hanging) - 30 = 10Mi left
	} {
		done := make(chan error, 1)
		go func() {
			_, err := tc.node.CreateVolume(ctx, "fast", pool.Volume{ID: tc.id, Name: tc.id, CapacityBytes: tc.bytes, Mode: pool.ModeBlock})
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, tc.want) || tc.want == nil && err != nil {
				t.Errorf("%s: %v, want %v", tc.id, err, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s waited for another create's API write (old: one lock for all nodes across the write)", tc.id)
		}
	}
}

// The node's word that a Ready volume's storage is out of reach reaches the
// controller's volume health as the volume's problem.
func TestToVolumeCarriesUnreachable(t *testing.T) {
	v := &v1alpha1.PlinthVolume{Spec: v1alpha1.VolumeSpec{Pool: "whole", Mode: v1alpha1.ModeBlock},
		Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 1 << 30, Reason: v1alpha1.ReasonUnreachable, Message: "its disk wwn:x is not present"}}
	if got := toVolume(v); got.Problem != "its disk wwn:x is not present" || got.State != pool.StateReady {
		t.Errorf("toVolume: %+v", got)
	}
	v.Status.Reason, v.Status.Message = "", ""
	if got := toVolume(v); got.Problem != "" {
		t.Errorf("toVolume of a healthy volume: problem %q", got.Problem)
	}
}

// A node that refuses (its pool filled since it last said) hands the
// volume to the next node within the same call, and its reservation is
// given back even though the refused object leaves the cache at once.
// old: the refused object, still cached, read as the same volume on
// another node (ErrExists) at the handover, and its in-memory reservation
// was never given back once the object was gone: every later try answered
// "in progress" and the node's pool counted one volume too many for good.
func TestRefusalHandsOverAndGivesBack(t *testing.T) {
	const key = "topology.plinth.example.com/node"
	nodes := []runtime.Object{plinthNode("n1", poolStatus("a", 50*mi)), plinthNode("n2", poolStatus("a", 40*mi))}
	refuse := func(v *v1alpha1.PlinthVolume) {
		if v.Spec.NodeName == "n2" {
			v.Status.Phase, v.Status.Reason, v.Status.Message = v1alpha1.VolumeFailed, v1alpha1.ReasonNoSpace, "pool a has 1MiB free"
			return
		}
		markReady(v)
	}
	c, _ := fakeClusterOf(t, nodes, withHook(refuse), nil)
	p := &Provisioner{Driver: "plinth.example.com", TopologyKey: key, Controller: volume.NewControllerOver(c)}
	immediate := storagev1.VolumeBindingImmediate
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: "plinth.example.com", VolumeBindingMode: &immediate}
	block := v1.PersistentVolumeBlock
	claim := claimOf("30Mi")
	claim.Spec.VolumeMode = &block
	pv, _, err := p.Provision(context.Background(), controller.ProvisionOptions{StorageClass: sc, PVName: "pvc-handover", PVC: claim})
	if err != nil {
		t.Fatalf("refused on n2, not handed to n1: %v", err)
	}
	if node := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0]; node != "n1" {
		t.Errorf("placed on %s, want n1 (n2, the best fit, refused)", node)
	}
	if got := c.reservedBytes("n2", "a"); got != 0 {
		t.Errorf("n2 still holds %d reserved bytes for the volume it refused", got)
	}
	if c.reservedFor(volume.VolumeID("pvc-handover")) && c.reservedBytes("n1", "a") == 0 {
		t.Error("a reservation is left for a volume no node is creating")
	}
}

// A Ready volume stays reserved until the node status the controller has
// counts it (status.countedIn against the PlinthNode's status.sequence):
// the volume and the node's new numbers come on separate watches, and
// when the volume comes first it was in neither count (old: the
// reservation went as soon as the volume read Ready, so a full pool could
// be promised again).
func TestReadyVolumeReservedUntilCounted(t *testing.T) {
	node := &v1alpha1.PlinthNode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: v1alpha1.NodeStatus{Pools: []v1alpha1.PoolStatus{poolStatus("fast", 100*mi)}, Sequence: 5}}
	vol := func(name string, counted int64) *v1alpha1.PlinthVolume {
		return &v1alpha1.PlinthVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelNode: "n1", v1alpha1.LabelPool: "fast"}},
			Spec:       v1alpha1.VolumeSpec{NodeName: "n1", Pool: "fast", CapacityBytes: 30 * mi, Mode: v1alpha1.ModeBlock},
			Status:     v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 30 * mi, CountedIn: counted},
		}
	}
	c, _ := fakeClusterOf(t, []runtime.Object{node}, nil, nil, vol("pv-counted", 5), vol("pv-ahead", 6), vol("pv-old-node", 0))
	if got := c.reservedBytes("n1", "fast"); got != 30*mi {
		t.Errorf("reserved %d, want 30MiB: only the volume counted in status 6 (the controller has 5)", got)
	}
	infos, err := c.poolInfos("n1")
	if err != nil {
		t.Fatal(err)
	}
	if got := infos[0].Stats.MaxVolumeBytes(); got != 70*mi {
		t.Errorf("allocatable %d, want 70MiB", got)
	}
}
