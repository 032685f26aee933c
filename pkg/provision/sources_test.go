package provision

import (
	"context"
	"errors"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapfake "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/fake"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	corefake "k8s.io/client-go/kubernetes/fake"

	"github.com/plinth-dev/plinth/pkg/pool"
)

const driverName = "plinth.example.com"

func ptr[T any](v T) *T { return &v }

// snapshotPair is a VolumeSnapshot ns/name bound to a ready content of
// driver with handle, restore size given.
func snapshotPair(ns, name, driver, handle string, restore int64) (*snapv1.VolumeSnapshot, *snapv1.VolumeSnapshotContent) {
	vs := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Status: &snapv1.VolumeSnapshotStatus{
			BoundVolumeSnapshotContentName: ptr("content-" + ns + "-" + name), ReadyToUse: ptr(true),
			RestoreSize: resource.NewQuantity(restore, resource.BinarySI),
		},
	}
	vsc := &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: "content-" + ns + "-" + name},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver: driver, VolumeSnapshotRef: v1.ObjectReference{Namespace: ns, Name: name},
		},
		Status: &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr(handle)},
	}
	return vs, vsc
}

// boundClaim is PVC ns/name bound to PV pv of driver with handle.
func boundClaim(ns, name, pvName, driver, handle string, size int64) (*v1.PersistentVolumeClaim, *v1.PersistentVolume) {
	c := &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Spec:       v1.PersistentVolumeClaimSpec{VolumeName: pvName},
		Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimBound,
			Capacity: v1.ResourceList{v1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}},
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: handle}},
			ClaimRef:               &v1.ObjectReference{Namespace: ns, Name: name, UID: c.UID},
		},
	}
	return c, pv
}

func claimFrom(ns string, src *v1.TypedLocalObjectReference) *v1.PersistentVolumeClaim {
	return &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "new"}, Spec: v1.PersistentVolumeClaimSpec{DataSource: src}}
}

func snapRef(name string) *v1.TypedLocalObjectReference {
	return &v1.TypedLocalObjectReference{APIGroup: ptr(snapv1.GroupName), Kind: "VolumeSnapshot", Name: name}
}

func claimRef(name string) *v1.TypedLocalObjectReference {
	return &v1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: name}
}

// A PVC's data source is read only in its own namespace, only when it is
// plinth's and ready; anything else is
// refused with the kind of error the provisioner turns into a retry (not
// ready) or an event (invalid, unsupported), and never into another
// volume's data.
func TestSourcesResolve(t *testing.T) {
	ctx := context.Background()
	good, goodC := snapshotPair("ns", "good", driverName, "sn-good", 100*mi)
	foreign, foreignC := snapshotPair("ns", "foreign", "other.csi.example.com", "sn-foreign", mi)
	stolen, _ := snapshotPair("ns", "stolen", driverName, "sn-x", mi)
	_, stolenC := snapshotPair("ns", "victim", driverName, "sn-victim", mi) // its content names victim, not stolen
	stolen.Status.BoundVolumeSnapshotContentName = ptr(stolenC.Name)
	notReady, notReadyC := snapshotPair("ns", "notready", driverName, "sn-nr", mi)
	notReady.Status.ReadyToUse = ptr(false)
	dying, dyingC := snapshotPair("ns", "dying", driverName, "sn-dying", mi)
	dying.DeletionTimestamp = &metav1.Time{}
	dying.Finalizers = []string{"x"}
	other, otherC := snapshotPair("elsewhere", "good", driverName, "sn-elsewhere", mi)

	src, srcPV := boundClaim("ns", "src", "pv-src", driverName, "pv-src-handle", 100*mi)
	nfs, nfsPV := boundClaim("ns", "nfs", "pv-nfs", "nfs.csi.k8s.io", "nfs-handle", mi)
	pending := &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pending"}, Status: v1.PersistentVolumeClaimStatus{Phase: v1.ClaimPending}}
	// A PV that names another claim than the one that points at it.
	liar, _ := boundClaim("ns", "liar", "pv-src", driverName, "", mi)

	s := &Sources{
		Core:      corefake.NewSimpleClientset([]runtime.Object{src, srcPV, nfs, nfsPV, pending, liar}...),
		Snapshots: snapfake.NewSimpleClientset(good, goodC, foreign, foreignC, stolen, stolenC, notReady, notReadyC, dying, dyingC, other, otherC),
		Driver:    driverName,
	}
	for _, tc := range []struct {
		name  string
		claim *v1.PersistentVolumeClaim
		want  *pool.Source
		err   error
	}{
		{"no source", claimFrom("ns", nil), nil, nil},
		{"snapshot", claimFrom("ns", snapRef("good")), &pool.Source{SnapshotID: "sn-good"}, nil},
		{"snapshot of another driver", claimFrom("ns", snapRef("foreign")), nil, pool.ErrInvalid},
		{"content bound to another snapshot", claimFrom("ns", snapRef("stolen")), nil, pool.ErrInvalid},
		{"snapshot not ready", claimFrom("ns", snapRef("notready")), nil, ErrInProgress},
		{"snapshot being deleted", claimFrom("ns", snapRef("dying")), nil, pool.ErrInvalid},
		{"snapshot missing", claimFrom("ns", snapRef("nope")), nil, ErrInProgress},
		{"snapshot of another namespace is not seen", claimFrom("other", snapRef("good")), nil, ErrInProgress},
		{"clone", claimFrom("ns", claimRef("src")), &pool.Source{VolumeID: "pv-src-handle"}, nil},
		{"clone of another driver's volume", claimFrom("ns", claimRef("nfs")), nil, pool.ErrInvalid},
		{"clone of an unbound claim", claimFrom("ns", claimRef("pending")), nil, ErrInProgress},
		{"clone through a PV bound to another claim", claimFrom("ns", claimRef("liar")), nil, pool.ErrInvalid},
		{"unknown kind", claimFrom("ns", &v1.TypedLocalObjectReference{APIGroup: ptr("example.com"), Kind: "Populator", Name: "p"}), nil, pool.ErrUnsupported},
		{"kind without its group", claimFrom("ns", &v1.TypedLocalObjectReference{Kind: "VolumeSnapshot", Name: "good"}), nil, pool.ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Resolve(ctx, tc.claim)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Resolve = %+v, %v; want %v", got, err, tc.err)
				}
				return
			}
			if err != nil || (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
				t.Fatalf("Resolve = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}

	// A dataSourceRef into another namespace is refused, not followed.
	c := claimFrom("ns", nil)
	c.Spec.DataSourceRef = &v1.TypedObjectReference{APIGroup: ptr(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "good", Namespace: ptr("elsewhere")}
	if got, err := s.Resolve(ctx, c); !errors.Is(err, pool.ErrUnsupported) {
		t.Fatalf("cross-namespace dataSourceRef: %+v, %v", got, err)
	}
	// dataSourceRef wins over dataSource (the API server keeps them equal).
	c = claimFrom("ns", snapRef("foreign"))
	c.Spec.DataSourceRef = &v1.TypedObjectReference{APIGroup: ptr(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "good"}
	if got, err := s.Resolve(ctx, c); err != nil || got.SnapshotID != "sn-good" {
		t.Fatalf("dataSourceRef: %+v, %v", got, err)
	}
}
