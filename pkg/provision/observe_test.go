package provision

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// Every provision and delete the library hands plinth is counted once,
// with the result an operator alerts on: success, error, in_progress (the
// volume is still being made on its node), reschedule (the scheduler's
// node cannot hold it).
func TestOperationsObserved(t *testing.T) {
	const ready, lost = "pvc-ready", "pvc-lost"
	readyObj := &v1alpha1.PlinthVolume{
		ObjectMeta: metav1.ObjectMeta{Name: volume.VolumeID(ready), Labels: map[string]string{v1alpha1.LabelNode: "n1", v1alpha1.LabelPool: "fast"}},
		Spec:       v1alpha1.VolumeSpec{NodeName: "n1", Pool: "fast", VolumeName: ready, CapacityBytes: 10 * mi, Mode: v1alpha1.ModeBlock},
		Status:     v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 10 * mi},
	}
	c, _ := fakeCluster(t, 100*mi, nil, readyObj)
	var seen []string
	p := &Provisioner{Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", Controller: volume.NewControllerOver(c),
		Observe: func(op, result string, d time.Duration) {
			if d < 0 {
				t.Errorf("%s %s: negative duration %s", op, result, d)
			}
			seen = append(seen, op+"/"+result)
		}}
	block := v1.PersistentVolumeBlock
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: "plinth.example.com", Parameters: map[string]string{"pool": "fast"}}
	claim := func(size string) *v1.PersistentVolumeClaim {
		return &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"},
			Spec: v1.PersistentVolumeClaimSpec{AccessModes: []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce}, VolumeMode: &block,
				Resources: v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: resource.MustParse(size)}}}}
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name, pv, size, node string
		want                 controller.ProvisioningState
		result               string
	}{
		{"a volume that is ready", ready, "10Mi", "n1", controller.ProvisioningFinished, "provision/success"},
		{"a volume still being made", "pvc-new", "10Mi", "n1", controller.ProvisioningInBackground, "provision/in_progress"},
		{"too big for the scheduler's node", "pvc-big", "1Gi", "n1", controller.ProvisioningReschedule, "provision/reschedule"},
		{"too big anywhere", "pvc-big2", "1Gi", "", controller.ProvisioningFinished, "provision/error"},
	} {
		seen = nil
		_, state, _ := p.Provision(ctx, controller.ProvisionOptions{StorageClass: sc, PVName: tc.pv, PVC: claim(tc.size), SelectedNodeName: tc.node})
		if state != tc.want || len(seen) != 1 || seen[0] != tc.result {
			t.Errorf("%s: state %s, observed %v; want %s, [%s]", tc.name, state, seen, tc.want, tc.result)
		}
	}
	pv := func(name string) *v1.PersistentVolume {
		return &v1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.PersistentVolumeSpec{PersistentVolumeSource: v1.PersistentVolumeSource{
			CSI: &v1.CSIPersistentVolumeSource{Driver: "plinth.example.com", VolumeHandle: volume.VolumeID(name)}}}}
	}
	seen = nil
	_ = p.Delete(ctx, pv(lost)) // no such volume: deleted already
	_ = p.Delete(ctx, &v1.PersistentVolume{Spec: v1.PersistentVolumeSpec{PersistentVolumeSource: v1.PersistentVolumeSource{
		CSI: &v1.CSIPersistentVolumeSource{Driver: "another.example.com", VolumeHandle: "x"}}}})
	if len(seen) != 1 || seen[0] != "delete/success" {
		t.Errorf("deletes observed %v; want [delete/success] (another driver's PV is not plinth's operation)", seen)
	}
	// A volume on a node that left is kept: the delete fails.
	gone, _ := fakeCluster(t, 100*mi, map[string]bool{"n1": true}, volumeObject(volume.VolumeID(lost), v1alpha1.VolumeReady, "", ""))
	p.Controller = volume.NewControllerOver(gone)
	seen = nil
	if err := p.Delete(ctx, pv(lost)); err == nil || len(seen) != 1 || seen[0] != "delete/error" {
		t.Errorf("delete on a lost node: %v, observed %v; want an error, [delete/error]", err, seen)
	}
}
