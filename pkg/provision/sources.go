package provision

import (
	"context"
	"fmt"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// Sources resolves a PVC's data source, a VolumeSnapshot (restore) or
// another PVC (clone) of plinth's driver, into the snapshot or volume it
// names, as the external-provisioner sidecar does for other drivers.
type Sources struct {
	Core      kubernetes.Interface
	Snapshots snapclient.Interface
	Driver    string
}

// ErrSourceNotReady: the data source exists but cannot be read from yet (a
// VolumeSnapshot not ready to use, a PVC not bound); the provisioner tries
// again.
var ErrSourceNotReady = fmt.Errorf("%w: the data source is not ready yet", ErrInProgress)

// Resolve returns what pvc's data source names, or nil when it has none.
// Only the PVC's own namespace is read from. (A claim smaller than its
// source gets the source's size: volume.Controller rounds it up.)
func (s *Sources) Resolve(ctx context.Context, pvc *v1.PersistentVolumeClaim) (*pool.Source, error) {
	ref := pvc.Spec.DataSourceRef
	if ref == nil && pvc.Spec.DataSource != nil {
		ref = &v1.TypedObjectReference{APIGroup: pvc.Spec.DataSource.APIGroup, Kind: pvc.Spec.DataSource.Kind, Name: pvc.Spec.DataSource.Name}
	}
	if ref == nil {
		return nil, nil
	}
	if ref.Namespace != nil && *ref.Namespace != "" && *ref.Namespace != pvc.Namespace {
		return nil, fmt.Errorf("%w: data source %s %s/%s is in another namespace than the PVC; plinth reads sources in the PVC's own namespace only",
			pool.ErrUnsupported, ref.Kind, *ref.Namespace, ref.Name)
	}
	group := ""
	if ref.APIGroup != nil {
		group = *ref.APIGroup
	}
	switch {
	case group == snapv1.GroupName && ref.Kind == "VolumeSnapshot":
		return s.snapshot(ctx, pvc.Namespace, ref.Name)
	case group == "" && ref.Kind == "PersistentVolumeClaim":
		return s.clone(ctx, pvc.Namespace, ref.Name)
	}
	return nil, fmt.Errorf("%w: data source kind %s (group %q): plinth fills volumes from VolumeSnapshots and PVCs only", pool.ErrUnsupported, ref.Kind, group)
}

func (s *Sources) snapshot(ctx context.Context, ns, name string) (*pool.Source, error) {
	if s.Snapshots == nil {
		return nil, fmt.Errorf("%w: VolumeSnapshot data sources need the snapshot API", pool.ErrUnsupported)
	}
	vs, err := s.Snapshots.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("VolumeSnapshot %s/%s: %w", ns, name, ErrSourceNotReady)
	}
	if err != nil {
		return nil, fmt.Errorf("read VolumeSnapshot %s/%s: %w", ns, name, err)
	}
	if vs.DeletionTimestamp != nil {
		return nil, fmt.Errorf("%w: VolumeSnapshot %s/%s is being deleted", pool.ErrInvalid, ns, name)
	}
	st := vs.Status
	if st == nil || st.BoundVolumeSnapshotContentName == nil || st.ReadyToUse == nil || !*st.ReadyToUse {
		return nil, fmt.Errorf("VolumeSnapshot %s/%s: %w", ns, name, ErrSourceNotReady)
	}
	vsc, err := s.Snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, *st.BoundVolumeSnapshotContentName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read VolumeSnapshotContent %s of VolumeSnapshot %s/%s: %w", *st.BoundVolumeSnapshotContentName, ns, name, err)
	}
	// The content must say it belongs to that snapshot: a content bound
	// to another VolumeSnapshot is not this one's to restore.
	if r := vsc.Spec.VolumeSnapshotRef; r.Namespace != ns || r.Name != name {
		return nil, fmt.Errorf("%w: VolumeSnapshotContent %s belongs to VolumeSnapshot %s/%s, not %s/%s", pool.ErrInvalid, vsc.Name, r.Namespace, r.Name, ns, name)
	}
	if vsc.Spec.Driver != s.Driver {
		return nil, fmt.Errorf("%w: VolumeSnapshot %s/%s is of driver %s, not %s", pool.ErrInvalid, ns, name, vsc.Spec.Driver, s.Driver)
	}
	if vsc.Status == nil || vsc.Status.SnapshotHandle == nil || *vsc.Status.SnapshotHandle == "" {
		return nil, fmt.Errorf("VolumeSnapshotContent %s: %w", vsc.Name, ErrSourceNotReady)
	}
	return &pool.Source{SnapshotID: *vsc.Status.SnapshotHandle}, nil
}

func (s *Sources) clone(ctx context.Context, ns, name string) (*pool.Source, error) {
	src, err := s.Core.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("PVC %s/%s: %w", ns, name, ErrSourceNotReady)
	}
	if err != nil {
		return nil, fmt.Errorf("read PVC %s/%s: %w", ns, name, err)
	}
	if src.DeletionTimestamp != nil {
		return nil, fmt.Errorf("%w: source PVC %s/%s is being deleted", pool.ErrInvalid, ns, name)
	}
	if src.Status.Phase != v1.ClaimBound || src.Spec.VolumeName == "" {
		return nil, fmt.Errorf("source PVC %s/%s is not bound: %w", ns, name, ErrSourceNotReady)
	}
	pv, err := s.Core.CoreV1().PersistentVolumes().Get(ctx, src.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read PV %s of PVC %s/%s: %w", src.Spec.VolumeName, ns, name, err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != s.Driver {
		return nil, fmt.Errorf("%w: source PVC %s/%s is not a volume of driver %s", pool.ErrInvalid, ns, name, s.Driver)
	}
	if r := pv.Spec.ClaimRef; r == nil || r.Namespace != ns || r.Name != name || r.UID != src.UID {
		return nil, fmt.Errorf("%w: PV %s is not bound to PVC %s/%s", pool.ErrInvalid, pv.Name, ns, name)
	}
	return &pool.Source{VolumeID: pv.Spec.CSI.VolumeHandle}, nil
}
