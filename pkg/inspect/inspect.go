package inspect

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/bytesize"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
)

// Client reads the cluster.
type Client struct {
	Core   kubernetes.Interface
	Plinth versioned.Interface
	Driver string
	Now    func() time.Time
	// StaleAfter is how old a node's heartbeat may be before Status calls
	// its agent not reporting (default DefaultStaleAfter).
	StaleAfter time.Duration
}

// PoolReport is one pool of one node.
type PoolReport struct {
	Name             string `json:"name"`
	Backend          string `json:"backend"`
	TotalBytes       int64  `json:"totalBytes"`
	AllocatableBytes int64  `json:"allocatableBytes"`
	ProvisionedBytes int64  `json:"provisionedBytes"`
	Volumes          int    `json:"volumes"`
	Healthy          bool   `json:"healthy"`
}

// ResourceReport is one extended resource of one node.
type ResourceReport struct {
	Resource  string `json:"resource"`
	Devices   int    `json:"devices"`
	Healthy   int    `json:"healthy"`
	Allocated int64  `json:"allocated"`
}

// NodeReport is what `kubectl plinth nodes` shows of a node.
type NodeReport struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	Heartbeat string `json:"heartbeat"`
	// NodeGone: the Kubernetes Node object has left the cluster (the
	// table says LOST).
	NodeGone bool `json:"nodeGone,omitempty"`
	// VolumeObjects counts the volume objects of a lost node that plinth
	// has no status of any more (its PlinthNode went with the Node).
	VolumeObjects int              `json:"volumeObjects,omitempty"`
	Pools         []PoolReport     `json:"pools"`
	Resources     []ResourceReport `json:"resources"`
}

// VolumeReport is one volume.
type VolumeReport struct {
	ID    string `json:"id"`
	Claim string `json:"claim"`
	Node  string `json:"node"`
	// NodeLost: the node's Kubernetes Node object has left the cluster
	// (the table says LOST): the volume is out of reach.
	NodeLost      bool   `json:"nodeLost,omitempty"`
	Pool          string `json:"pool"`
	Mode          string `json:"mode"`
	CapacityBytes int64  `json:"capacityBytes"`
	// UsedBytes is what the volume holds, as its node last published it
	// (at UsageTime); absent where the node cannot tell.
	UsedBytes *int64       `json:"usedBytes,omitempty"`
	UsageTime *metav1.Time `json:"usageTime,omitempty"`
	Phase     string       `json:"phase"`
	Message   string       `json:"message,omitempty"`
	// Thick and IOLimits are what the node made true of the volume's
	// VolumeAttributesClass (the volume object's status.applied, or its
	// spec from a node that predates it).
	Thick    bool               `json:"thick,omitempty"`
	IOLimits *v1alpha1.IOLimits `json:"ioLimits,omitempty"`
	Pods     []string           `json:"pods"`
	// Snapshots taken of the volume (they outlive it: a deleted volume's
	// snapshots are not listed here, but stay as PlinthSnapshots).
	Snapshots []SnapshotReport `json:"snapshots"`
}

// SnapshotReport is one snapshot of a volume.
type SnapshotReport struct {
	ID        string `json:"id"`
	Phase     string `json:"phase"`
	SizeBytes int64  `json:"sizeBytes"`
}

// Holder is a pod holding devices of a resource.
type Holder struct {
	Node     string `json:"node"`
	Resource string `json:"resource"`
	Pod      string `json:"pod"`
	Count    int64  `json:"count"`
}

// DeviceReport is what `kubectl plinth devices` shows of one resource on one node.
type DeviceReport struct {
	Node      string   `json:"node"`
	Resource  string   `json:"resource"`
	Devices   []string `json:"devices"`
	Unhealthy []string `json:"unhealthy"`
	Holders   []Holder `json:"holders"`
	Free      int64    `json:"free"`
}

func (c *Client) plinthNodes(ctx context.Context) ([]*v1alpha1.PlinthNode, error) {
	l, err := c.Plinth.PlinthV1alpha1().PlinthNodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list plinthnodes: %w (is plinth installed?)", err)
	}
	out := make([]*v1alpha1.PlinthNode, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (c *Client) plinthVolumes(ctx context.Context) ([]*v1alpha1.PlinthVolume, error) {
	l, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list plinthvolumes: %w (is plinth installed?)", err)
	}
	out := make([]*v1alpha1.PlinthVolume, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// activePods lists the pods that hold resources (not finished).
func (c *Client) activePods(ctx context.Context, nodeName string) ([]corev1.Pod, error) {
	opts := metav1.ListOptions{}
	if nodeName != "" {
		opts.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
	}
	l, err := c.Core.CoreV1().Pods("").List(ctx, opts)
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			out = append(out, p)
		}
	}
	return out, nil
}

// requested is what a pod asks of a resource (the larger of its init
// containers' and the sum of its containers', as the scheduler counts).
func requested(p corev1.Pod, r corev1.ResourceName) int64 {
	var sum, initMax int64
	for _, ct := range p.Spec.Containers {
		q := ct.Resources.Limits[r]
		sum += q.Value()
	}
	for _, ct := range p.Spec.InitContainers {
		q := ct.Resources.Limits[r]
		initMax = max(initMax, q.Value())
	}
	return max(sum, initMax)
}

func (c *Client) age(t metav1.Time) string {
	if t.IsZero() {
		return "never"
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	return now().Sub(t.Time).Round(time.Second).String() + " ago"
}

// Nodes reports every plinth node.
func (c *Client) Nodes(ctx context.Context) ([]NodeReport, error) {
	pns, err := c.plinthNodes(ctx)
	if err != nil {
		return nil, err
	}
	pods, err := c.activePods(ctx, "")
	if err != nil {
		return nil, err
	}
	vols, err := c.plinthVolumes(ctx)
	if err != nil {
		return nil, err
	}
	lost := c.nodeLookup()
	var out []NodeReport
	for _, pn := range pns {
		r := NodeReport{Name: pn.Name, Version: pn.Status.Version, Heartbeat: c.age(pn.Status.HeartbeatTime), NodeGone: lost.gone(ctx, pn.Name)}
		for _, p := range pn.Status.Pools {
			r.Pools = append(r.Pools, PoolReport{Name: p.Name, Backend: p.Backend, TotalBytes: p.TotalBytes, AllocatableBytes: p.AllocatableBytes,
				ProvisionedBytes: p.ProvisionedBytes, Volumes: p.Volumes, Healthy: p.Healthy})
		}
		byRes := map[string]*ResourceReport{}
		for _, d := range pn.Status.Devices {
			rr := byRes[d.Resource]
			if rr == nil {
				rr = &ResourceReport{Resource: d.Resource}
				byRes[d.Resource] = rr
			}
			rr.Devices++
			if d.Healthy {
				rr.Healthy++
			}
		}
		for _, p := range pods {
			if p.Spec.NodeName != pn.Name {
				continue
			}
			for res, rr := range byRes {
				rr.Allocated += requested(p, corev1.ResourceName(res))
			}
		}
		for _, rr := range byRes {
			r.Resources = append(r.Resources, *rr)
		}
		sort.Slice(r.Resources, func(i, j int) bool { return r.Resources[i].Resource < r.Resources[j].Resource })
		out = append(out, r)
	}
	// A node that left takes its PlinthNode with it (owned by the Node),
	// but not its volumes: name it by them.
	held := map[string]int{}
	for _, v := range vols {
		held[v.Spec.NodeName]++
	}
	for name, n := range held {
		if name == "" || slices.ContainsFunc(pns, func(pn *v1alpha1.PlinthNode) bool { return pn.Name == name }) {
			continue
		}
		out = append(out, NodeReport{Name: name, Heartbeat: "-", NodeGone: lost.gone(ctx, name), VolumeObjects: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// nodeLookup asks the API server once per node name whether its Node
// object has left the cluster.
func (c *Client) nodeLookup() *nodeLookup {
	return &nodeLookup{c: c, seen: map[string]bool{}}
}

type nodeLookup struct {
	c    *Client
	seen map[string]bool
}

// gone reports whether the Node object named name does not exist (an
// error other than NotFound says nothing).
func (l *nodeLookup) gone(ctx context.Context, name string) bool {
	if g, ok := l.seen[name]; ok {
		return g
	}
	_, err := l.c.Core.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	l.seen[name] = apierrors.IsNotFound(err)
	return l.seen[name]
}

// Volumes reports every volume and the pods that use its claim.
func (c *Client) Volumes(ctx context.Context) ([]VolumeReport, error) {
	vols, err := c.plinthVolumes(ctx)
	if err != nil {
		return nil, err
	}
	pods, err := c.activePods(ctx, "")
	if err != nil {
		return nil, err
	}
	sl, err := c.Plinth.PlinthV1alpha1().PlinthSnapshots().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list plinthsnapshots: %w", err)
	}
	snaps := map[string][]SnapshotReport{} // volume ID → its snapshots
	for _, sn := range sl.Items {
		phase := string(sn.Status.Phase)
		switch {
		case sn.DeletionTimestamp != nil:
			phase = string(v1alpha1.VolumeDeleting)
		case phase == "":
			phase = string(v1alpha1.VolumePending)
		}
		snaps[sn.Spec.SourceVolumeID] = append(snaps[sn.Spec.SourceVolumeID], SnapshotReport{ID: sn.Name, Phase: phase, SizeBytes: sn.Status.SizeBytes})
	}
	users := map[string][]string{} // namespace/claim → pods
	for _, p := range pods {
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim != nil {
				k := p.Namespace + "/" + v.PersistentVolumeClaim.ClaimName
				users[k] = append(users[k], p.Namespace+"/"+p.Name)
			}
		}
	}
	lost := c.nodeLookup()
	var out []VolumeReport
	for _, v := range vols {
		capacity := v.Status.CapacityBytes
		if capacity == 0 {
			capacity = v.Spec.CapacityBytes
		}
		phase := string(v.Status.Phase)
		if v.DeletionTimestamp != nil {
			phase = string(v1alpha1.VolumeDeleting)
		}
		if phase == "" {
			phase = string(v1alpha1.VolumePending)
		}
		r := VolumeReport{ID: v.Name, Claim: v.Spec.Claim, Node: v.Spec.NodeName, NodeLost: lost.gone(ctx, v.Spec.NodeName), Pool: v.Spec.Pool, Mode: v.Spec.Mode,
			CapacityBytes: capacity, UsedBytes: v.Status.UsedBytes, UsageTime: v.Status.UsageTime, Phase: phase, Message: v.Status.Message, Pods: users[v.Spec.Claim], Snapshots: snaps[v.Name],
			Thick: v.Spec.Thick, IOLimits: v.Spec.IOLimits}
		if a := v.Status.Applied; a != nil {
			r.Thick, r.IOLimits = a.Thick, a.IOLimits
		}
		out = append(out, r)
	}
	return out, nil
}

// Devices reports, per node and resource, the devices, their health and
// the pods holding them.
func (c *Client) Devices(ctx context.Context) ([]DeviceReport, error) {
	pns, err := c.plinthNodes(ctx)
	if err != nil {
		return nil, err
	}
	pods, err := c.activePods(ctx, "")
	if err != nil {
		return nil, err
	}
	var out []DeviceReport
	for _, pn := range pns {
		byRes := map[string]*DeviceReport{}
		var order []string
		for _, d := range pn.Status.Devices {
			r := byRes[d.Resource]
			if r == nil {
				r = &DeviceReport{Node: pn.Name, Resource: d.Resource}
				byRes[d.Resource] = r
				order = append(order, d.Resource)
			}
			r.Devices = append(r.Devices, d.ID)
			if !d.Healthy {
				r.Unhealthy = append(r.Unhealthy, d.ID)
			}
		}
		sort.Strings(order)
		for _, res := range order {
			r := byRes[res]
			held := int64(0)
			for _, p := range pods {
				if p.Spec.NodeName != pn.Name {
					continue
				}
				if n := requested(p, corev1.ResourceName(res)); n > 0 {
					r.Holders = append(r.Holders, Holder{Node: pn.Name, Resource: res, Pod: p.Namespace + "/" + p.Name, Count: n})
					held += n
				}
			}
			r.Free = int64(len(r.Devices)-len(r.Unhealthy)) - held
			out = append(out, *r)
		}
	}
	return out, nil
}

// DiskReport is one disk of one node.
type DiskReport struct {
	Node string `json:"node"`
	v1alpha1.DiskStatus
}

// Disks reports every node's disks: identity, size, transport, NUMA node,
// state and pool (nodes with disk rules publish them).
func (c *Client) Disks(ctx context.Context) ([]DiskReport, error) {
	pns, err := c.plinthNodes(ctx)
	if err != nil {
		return nil, err
	}
	var out []DiskReport
	for _, pn := range pns {
		for _, d := range pn.Status.Disks {
			out = append(out, DiskReport{Node: pn.Name, DiskStatus: d})
		}
	}
	return out, nil
}

// Explanation says why something is (or is not) pending, in plinth's terms.
type Explanation struct {
	Object  string   `json:"object"`
	Status  string   `json:"status"`
	Reasons []string `json:"reasons"`
}

// WhyPVC explains a PVC's state.
func (c *Client) WhyPVC(ctx context.Context, ns, name string) (Explanation, error) {
	pvc, err := c.Core.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Explanation{}, err
	}
	ex := Explanation{Object: "pvc/" + ns + "/" + name, Status: string(pvc.Status.Phase)}
	add := func(f string, a ...any) { ex.Reasons = append(ex.Reasons, fmt.Sprintf(f, a...)) }
	if pvc.Status.Phase == corev1.ClaimBound {
		add("bound to %s", pvc.Spec.VolumeName)
		if v, ok := c.volumeOf(ctx, pvc.Spec.VolumeName); ok {
			add("volume %s on node %s, pool %s, %s (%s)", v.Name, v.Spec.NodeName, v.Spec.Pool, quantity(v.Status.CapacityBytes), v.Status.Phase)
			if c.nodeLookup().gone(ctx, v.Spec.NodeName) {
				add("node %s is LOST: its Node object has left the cluster, and the volume is out of reach (docs/troubleshooting.md)", v.Spec.NodeName)
			}
		}
		if st := pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage]; st != "" {
			add("resize: %s", st)
		}
		return ex, nil
	}
	if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName == "" {
		add("it names no StorageClass, and plinth provisions only for its own classes")
		return ex, nil
	}
	sc, err := c.Core.StorageV1().StorageClasses().Get(ctx, *pvc.Spec.StorageClassName, metav1.GetOptions{})
	if err != nil {
		add("StorageClass %s: %v", *pvc.Spec.StorageClassName, err)
		return ex, nil
	}
	if sc.Provisioner != c.Driver {
		add("StorageClass %s is provisioned by %s, not plinth (%s)", sc.Name, sc.Provisioner, c.Driver)
		return ex, nil
	}
	want := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	selected := pvc.Annotations["volume.kubernetes.io/selected-node"]
	if sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer && selected == "" {
		add("StorageClass %s binds WaitForFirstConsumer: the volume is made once a pod using the claim is scheduled", sc.Name)
		if users := c.podsUsing(ctx, ns, name); len(users) == 0 {
			add("no pod uses this claim yet")
		} else {
			add("pods using it: %s (see kubectl plinth why pod)", strings.Join(users, ", "))
		}
	}
	if selected != "" {
		add("the scheduler chose node %s", selected)
	}
	caps, err := c.Core.StorageV1().CSIStorageCapacities("").List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, cp := range caps.Items {
			if cp.StorageClassName != sc.Name || cp.Capacity == nil {
				continue
			}
			node := ""
			if cp.NodeTopology != nil {
				for _, v := range cp.NodeTopology.MatchLabels {
					node = v
				}
			}
			fits := "fits"
			if cp.MaximumVolumeSize != nil && cp.MaximumVolumeSize.Cmp(want) < 0 || cp.Capacity.Cmp(want) < 0 {
				fits = "does not fit"
			}
			add("node %s: %s free for class %s (largest volume %s); %s requested: %s", node, cp.Capacity.String(), sc.Name, cp.MaximumVolumeSize.String(), want.String(), fits)
		}
	}
	evs, err := c.Core.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.AndSelectors(
		fields.OneTermEqualSelector("involvedObject.kind", "PersistentVolumeClaim"),
		fields.OneTermEqualSelector("involvedObject.name", name)).String()})
	if err == nil {
		var last *corev1.Event
		for i := range evs.Items {
			ev := &evs.Items[i]
			if ev.Type == corev1.EventTypeWarning && (last == nil || ev.LastTimestamp.After(last.LastTimestamp.Time)) {
				last = ev
			}
		}
		if last != nil {
			add("last warning (%s, %d times): %s", last.Reason, max(last.Count, 1), last.Message)
		}
	}
	return ex, nil
}

// WhyPod explains why a pod is pending: its claims and its device requests.
func (c *Client) WhyPod(ctx context.Context, ns, name string) (Explanation, error) {
	pod, err := c.Core.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Explanation{}, err
	}
	ex := Explanation{Object: "pod/" + ns + "/" + name, Status: string(pod.Status.Phase)}
	add := func(f string, a ...any) { ex.Reasons = append(ex.Reasons, fmt.Sprintf(f, a...)) }
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse {
			add("not scheduled: %s", cond.Message)
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		sub, err := c.WhyPVC(ctx, ns, v.PersistentVolumeClaim.ClaimName)
		if err != nil {
			add("claim %s: %v", v.PersistentVolumeClaim.ClaimName, err)
			continue
		}
		for _, r := range sub.Reasons {
			add("claim %s (%s): %s", v.PersistentVolumeClaim.ClaimName, sub.Status, r)
		}
	}
	devs, err := c.Devices(ctx)
	if err != nil {
		return ex, nil
	}
	asked := map[string]int64{}
	for _, d := range devs {
		if n := requested(*pod, corev1.ResourceName(d.Resource)); n > 0 {
			asked[d.Resource] = n
		}
	}
	for res, n := range asked {
		for _, d := range devs {
			if d.Resource != res {
				continue
			}
			if pod.Spec.NodeName == d.Node {
				add("%s: holds %d on node %s", res, n, d.Node)
				continue
			}
			add("%s: asks %d; node %s has %d devices, %d unhealthy, %d held by %d pods, %d free", res, n, d.Node, len(d.Devices),
				len(d.Unhealthy), int64(len(d.Devices)-len(d.Unhealthy))-d.Free, len(d.Holders), d.Free)
		}
	}
	return ex, nil
}

func (c *Client) volumeOf(ctx context.Context, pvName string) (*v1alpha1.PlinthVolume, bool) {
	pv, err := c.Core.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
	if err != nil || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.Driver {
		return nil, false
	}
	v, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, pv.Spec.CSI.VolumeHandle, metav1.GetOptions{})
	return v, err == nil
}

func (c *Client) podsUsing(ctx context.Context, ns, claim string) []string {
	l, err := c.Core.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	var out []string
	for _, p := range l.Items {
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
				out = append(out, p.Name)
			}
		}
	}
	return out
}

func quantity(n int64) string { return bytesize.Format(n) }
