package provision

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// ParamFsType is the StorageClass parameter the CSI convention uses for
// the filesystem type.
const ParamFsType = "csi.storage.k8s.io/fstype"

// Provisioner turns PVCs of plinth's StorageClasses into volumes on nodes
// and PVs bound to them; it is the Provisioner of
// sig-storage-lib-external-provisioner.
type Provisioner struct {
	Driver      string
	TopologyKey string
	Controller  *volume.Controller
	Events      record.EventRecorder
	// Sources resolves PVC data sources (restores, clones); nil refuses them.
	Sources *Sources
	// AttributeClasses are the VolumeAttributesClasses: a claim that names
	// one is made with its parameters (CreateVolume's mutable_parameters).
	// nil refuses such claims.
	AttributeClasses storagelisters.VolumeAttributesClassLister
	// Observe, when set, hears each provision and delete that finishes
	// (metrics).
	Observe Observer
}

// Observer hears a finished operation (provision, delete, expand) and its
// result: success or error; a provision also in_progress (the volume is
// still being made, the library asks again) or reschedule (the chosen node
// cannot hold it).
type Observer func(operation, result string, d time.Duration)

func (o Observer) observe(operation, result string, start time.Time) {
	if o != nil {
		o(operation, result, time.Since(start))
	}
}

// provisionResult names the outcome of one Provision call.
func provisionResult(state controller.ProvisioningState, err error) string {
	switch {
	case err == nil:
		return "success"
	case state == controller.ProvisioningInBackground:
		return "in_progress"
	case state == controller.ProvisioningReschedule:
		return "reschedule"
	}
	return "error"
}

var (
	_ controller.Provisioner      = (*Provisioner)(nil)
	_ controller.BlockProvisioner = (*Provisioner)(nil)
)

// SupportsBlock implements controller.BlockProvisioner.
func (p *Provisioner) SupportsBlock(context.Context) bool { return true }

// request reads a PVC and its class into a volume.Ask (what the CSI
// sidecar would put in a CreateVolumeRequest) and leaves every rule to
// volume.NewCreateRequest, the one CSI's CreateVolume goes through too.
func (p *Provisioner) request(ctx context.Context, opts controller.ProvisionOptions) (volume.CreateRequest, error) {
	sc, pvc := opts.StorageClass, opts.PVC
	ask := volume.Ask{
		Name: opts.PVName, Parameters: map[string]string{}, Owner: pvc.Namespace + "/" + pvc.Name,
		Block: pvc.Spec.VolumeMode != nil && *pvc.Spec.VolumeMode == v1.PersistentVolumeBlock,
	}
	for k, v := range sc.Parameters {
		if k == ParamFsType {
			ask.FsType = v
			continue
		}
		ask.Parameters[k] = v
	}
	for _, am := range pvc.Spec.AccessModes {
		// ReadOnlyMany alone is one node's reader; with another mode it
		// means readers on other nodes.
		ask.MultiNode = ask.MultiNode || am == v1.ReadWriteMany || am == v1.ReadOnlyMany && len(pvc.Spec.AccessModes) > 1
	}
	if q, ok := pvc.Spec.Resources.Requests[v1.ResourceStorage]; ok {
		ask.RequiredBytes = q.Value()
	}
	if q, ok := pvc.Spec.Resources.Limits[v1.ResourceStorage]; ok {
		ask.LimitBytes = q.Value()
	}
	if pvc.Spec.DataSource != nil || pvc.Spec.DataSourceRef != nil {
		if p.Sources == nil {
			return volume.CreateRequest{}, fmt.Errorf("%w: PVC data sources (clones, snapshots)", pool.ErrUnsupported)
		}
		src, err := p.Sources.Resolve(ctx, pvc)
		if err != nil {
			return volume.CreateRequest{}, err
		}
		ask.Source = src
	}
	if name := pvc.Spec.VolumeAttributesClassName; name != nil && *name != "" {
		if p.AttributeClasses == nil {
			return volume.CreateRequest{}, fmt.Errorf("%w: VolumeAttributesClass %s: this controller does not read VolumeAttributesClasses", pool.ErrUnsupported, *name)
		}
		class, err := p.AttributeClasses.Get(*name)
		if err != nil {
			return volume.CreateRequest{}, fmt.Errorf("VolumeAttributesClass %s: %w", *name, err)
		}
		if class.DriverName != p.Driver {
			return volume.CreateRequest{}, fmt.Errorf("%w: VolumeAttributesClass %s is for driver %s, not %s", pool.ErrInvalid, *name, class.DriverName, p.Driver)
		}
		ask.MutableParameters = class.Parameters
	}
	allowed, err := p.allowedNodes(sc.AllowedTopologies)
	if err != nil {
		return volume.CreateRequest{}, err
	}
	// The scheduler's choice (WaitForFirstConsumer) is the one node
	// allowed; otherwise allowedTopologies are (none: any node). Among
	// several, placement's best fit chooses (volume.Place).
	switch {
	case opts.SelectedNodeName != "":
		if allowed != nil && !allowed[opts.SelectedNodeName] {
			return volume.CreateRequest{}, fmt.Errorf("%w: node %s is outside the StorageClass's allowed topologies", pool.ErrNoSpace, opts.SelectedNodeName)
		}
		ask.Requisite = []string{opts.SelectedNodeName}
	case allowed != nil:
		for n := range allowed {
			ask.Requisite = append(ask.Requisite, n)
		}
		sort.Strings(ask.Requisite)
	}
	req, err := volume.NewCreateRequest(ask)
	if err != nil {
		return volume.CreateRequest{}, fmt.Errorf("StorageClass %s, PVC %s/%s: %w", sc.Name, pvc.Namespace, pvc.Name, err)
	}
	return req, nil
}

// allowedNodes reads a StorageClass's allowedTopologies for plinth's key;
// nil means any node.
func (p *Provisioner) allowedNodes(terms []v1.TopologySelectorTerm) (map[string]bool, error) {
	if len(terms) == 0 {
		return nil, nil
	}
	out := map[string]bool{}
	for _, t := range terms {
		for _, e := range t.MatchLabelExpressions {
			if e.Key != p.TopologyKey {
				return nil, fmt.Errorf("%w: allowedTopologies key %q: plinth's topology key is %q", pool.ErrInvalid, e.Key, p.TopologyKey)
			}
			for _, v := range e.Values {
				out[v] = true
			}
		}
	}
	return out, nil
}

// Provision implements controller.Provisioner.
func (p *Provisioner) Provision(ctx context.Context, opts controller.ProvisionOptions) (pv *v1.PersistentVolume, state controller.ProvisioningState, err error) {
	defer func(start time.Time) { p.Observe.observe("provision", provisionResult(state, err), start) }(time.Now())
	ctx = klog.NewContext(ctx, klog.FromContext(ctx).WithValues("pvc", klog.KObj(opts.PVC), "pv", opts.PVName))
	req, err := p.request(ctx, opts)
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	placed, err := p.Controller.CreateVolume(ctx, req)
	return p.answer(ctx, opts, placed, err)
}

func (p *Provisioner) answer(ctx context.Context, opts controller.ProvisionOptions, placed volume.Placed, err error) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	switch {
	case err == nil:
	case errors.Is(err, ErrInProgress):
		return nil, controller.ProvisioningInBackground, err
	case errors.Is(err, pool.ErrNoSpace) && opts.SelectedNodeName != "":
		// The scheduler chose a node that cannot hold it after all: let
		// it choose again.
		return nil, controller.ProvisioningReschedule, err
	case errors.Is(err, pool.ErrNoSpace):
		// No single pool on any allowed node holds it now. Nothing was
		// left behind, so the attempt is finished; the library retries
		// the claim with backoff (no failure threshold) and every retry
		// places afresh from the nodes' current numbers.
		return nil, controller.ProvisioningFinished, err
	case errors.Is(err, volume.ErrLocked):
		return nil, controller.ProvisioningInBackground, err
	default:
		return nil, controller.ProvisioningFinished, err
	}
	v := placed.Volume
	sc := opts.StorageClass
	reclaim := v1.PersistentVolumeReclaimDelete
	if sc.ReclaimPolicy != nil {
		reclaim = *sc.ReclaimPolicy
	}
	mode := v1.PersistentVolumeFilesystem
	if v.Mode == pool.ModeBlock {
		mode = v1.PersistentVolumeBlock
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: *resource.NewQuantity(v.CapacityBytes, resource.BinarySI)},
			AccessModes:                   opts.PVC.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			MountOptions:                  sc.MountOptions,
			VolumeMode:                    &mode,
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver:       p.Driver,
				VolumeHandle: v.ID,
				FSType:       v.FsType,
				VolumeAttributes: map[string]string{
					"plinth.example.com/node": placed.Node,
					"plinth.example.com/pool": v.Pool,
				},
			}},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{Key: p.TopologyKey, Operator: v1.NodeSelectorOpIn, Values: []string{placed.Node}}},
			}}}},
		},
	}
	if name := opts.PVC.Spec.VolumeAttributesClassName; name != nil && *name != "" {
		pv.Spec.VolumeAttributesClassName = name
	}
	klog.FromContext(ctx).V(2).Info("Provisioned", "node", placed.Node, "pool", v.Pool, "volumeID", v.ID, "capacity", v.CapacityBytes)
	return pv, controller.ProvisioningFinished, nil
}

// Delete implements controller.Provisioner: the volume's node removes the
// storage; a volume on a node that has left is reported and kept, unless
// the Cluster's LostNodes release it.
func (p *Provisioner) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.Driver {
		return &controller.IgnoredError{Reason: "not a plinth volume"}
	}
	start := time.Now()
	err := p.Controller.DeleteVolume(ctx, pv.Spec.CSI.VolumeHandle)
	if err != nil {
		p.Observe.observe("delete", "error", start)
	} else {
		p.Observe.observe("delete", "success", start)
	}
	if errors.Is(err, volume.ErrNodeGone) && p.Events != nil {
		p.Events.Event(pv, v1.EventTypeWarning, ReasonVolumeOnLostNode, err.Error())
	}
	if errors.Is(err, pool.ErrInUse) && p.Events != nil {
		p.Events.Event(pv, v1.EventTypeWarning, "VolumeInUse", err.Error())
	}
	return err
}
