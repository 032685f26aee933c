package provision

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
)

// Event reasons of volumes on lost nodes.
const (
	// ReasonVolumeOnLostNode: the volume's node has left the cluster (on
	// the PV and its PVC, once per loss; and on a PV whose delete fails).
	ReasonVolumeOnLostNode = "VolumeOnLostNode"
	// ReasonVolumeReleased: plinth deleted the PVC of a volume on a lost
	// node (--release-volumes-on-lost-node-after), on the PVC and the PV.
	ReasonVolumeReleased = "VolumeReleased"
)

// MinReleaseAfter is the shortest release delay allowed: shorter ones would
// race a node that is only re-registering its Node object.
const MinReleaseAfter = 30 * time.Second

// LostNodes watches the nodes that hold volume objects for their Kubernetes
// Node to leave the cluster. It reports every bound volume on such a node
// (a VolumeOnLostNode event on the PV and its PVC, once per volume and
// loss) and, when ReleaseAfter is set, releases them: once the node has
// been absent for longer than ReleaseAfter — counted from the first time
// this controller saw it absent — and a live GET confirms that the Node
// object does not exist, it deletes the PVCs bound to the node's volumes so
// that their pods can get new ones elsewhere; and remoteNode.DeleteVolume
// then lets the PVs go (Releasable). Nothing at all happens while the Node
// object exists, whatever its condition.
type LostNodes struct {
	// Client makes the live Node GETs and deletes PVCs.
	Client  kubernetes.Interface
	Cluster *Cluster
	PVs     corelisters.PersistentVolumeLister
	Claims  corelisters.PersistentVolumeClaimLister
	Driver  string
	Events  record.EventRecorder
	// ReleaseAfter is how long a node must be absent before its volumes'
	// claims are released; 0 never releases them.
	ReleaseAfter time.Duration
	// Interval is the period of a pass (default 10 s).
	Interval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time

	mu        sync.Mutex
	goneSince map[string]time.Time       // node → first seen absent
	reported  map[string]map[string]bool // node → volume IDs reported in this loss
}

// Run passes over the nodes every Interval until ctx ends.
func (l *LostNodes) Run(ctx context.Context) error {
	ctx = klog.NewContext(ctx, klog.FromContext(ctx).WithName("lost-nodes"))
	interval := l.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := l.pass(ctx); err != nil {
			klog.FromContext(ctx).Error(err, "Volumes on lost nodes")
		}
	}, interval)
	return nil
}

func (l *LostNodes) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// absent records that node's Node object is absent now and returns since
// when this controller has seen it so.
func (l *LostNodes) absent(node string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.goneSince == nil {
		l.goneSince = map[string]time.Time{}
	}
	since, ok := l.goneSince[node]
	if !ok {
		since = l.now()
		l.goneSince[node] = since
	}
	return since
}

// present forgets a loss: node's Node object exists (again).
func (l *LostNodes) present(node string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.goneSince, node)
	delete(l.reported, node)
}

// firstReport reports whether volume id on node is not yet reported in
// this loss, and marks it reported.
func (l *LostNodes) firstReport(node, id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reported == nil {
		l.reported = map[string]map[string]bool{}
	}
	if l.reported[node] == nil {
		l.reported[node] = map[string]bool{}
	}
	if l.reported[node][id] {
		return false
	}
	l.reported[node][id] = true
	return true
}

// Releasable reports whether the volumes on node may be released: release
// is on, the node is lost (see lost) and has been for longer than
// ReleaseAfter.
func (l *LostNodes) Releasable(ctx context.Context, node string) (bool, error) {
	if l == nil || l.ReleaseAfter <= 0 {
		return false, nil
	}
	since, gone, err := l.lost(ctx, node)
	if err != nil || !gone {
		return false, err
	}
	return l.due(since), nil
}

// due reports whether a node absent since then has been so for longer than
// ReleaseAfter.
func (l *LostNodes) due(since time.Time) bool {
	return l.ReleaseAfter > 0 && l.now().Sub(since) > l.ReleaseAfter
}

// lost reports whether node's Node object has left: the cache says so and
// a live GET confirms it; and since when this controller has seen it so. A
// Node found again (by the cache or the GET) ends the loss and restarts the
// clock.
func (l *LostNodes) lost(ctx context.Context, node string) (since time.Time, gone bool, err error) {
	if !l.Cluster.nodeGone(node) {
		l.present(node)
		return time.Time{}, false, nil
	}
	_, err = l.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return l.absent(node), true, nil
	case err != nil:
		return time.Time{}, false, fmt.Errorf("look up Node %s: %w", node, err)
	}
	klog.FromContext(ctx).V(2).Info("The cache says the Node is gone, the API server has it: its volumes are left alone", "node", node)
	l.present(node)
	return time.Time{}, false, nil
}

// claimed is a volume on a lost node with the PV bound to it and that PV's
// claim (nil when the PVC is not in the cache).
type claimed struct {
	volume *v1alpha1.PlinthVolume
	pv     *v1.PersistentVolume
	pvc    *v1.PersistentVolumeClaim
}

// pass looks at every node that holds volume objects once.
func (l *LostNodes) pass(ctx context.Context) error {
	var nodes []string
	for _, n := range l.Cluster.volumes.GetIndexer().ListIndexFuncValues(byNode) {
		if n != "" {
			nodes = append(nodes, n)
		}
	}
	sort.Strings(nodes)
	var byHandle map[string]*v1.PersistentVolume
	var errs []error
	for _, node := range nodes {
		since, gone, err := l.lost(ctx, node)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !gone {
			continue
		}
		if byHandle == nil {
			if byHandle, err = l.pvsByHandle(); err != nil {
				return err
			}
		}
		bound := l.bound(node, byHandle)
		for _, b := range bound {
			if l.firstReport(node, b.volume.Name) {
				l.reportLost(ctx, b, node, since)
			}
		}
		if l.due(since) {
			if err := l.release(ctx, node, since, bound); err != nil {
				errs = append(errs, err)
			}
		}
	}
	l.forgetOthers(nodes)
	return errors.Join(errs...)
}

// forgetOthers drops what is remembered of nodes that hold no volume
// objects any more.
func (l *LostNodes) forgetOthers(nodes []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for n := range l.goneSince {
		if !slices.Contains(nodes, n) {
			delete(l.goneSince, n)
			delete(l.reported, n)
		}
	}
}

// pvsByHandle is every PV of plinth's driver by volume ID.
func (l *LostNodes) pvsByHandle() (map[string]*v1.PersistentVolume, error) {
	pvs, err := l.PVs.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list PVs: %w", err)
	}
	out := map[string]*v1.PersistentVolume{}
	for _, pv := range pvs {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == l.Driver {
			out[pv.Spec.CSI.VolumeHandle] = pv
		}
	}
	return out, nil
}

// bound lists node's volumes that have a PV bound to a claim.
func (l *LostNodes) bound(node string, byHandle map[string]*v1.PersistentVolume) []claimed {
	var out []claimed
	for _, v := range l.Cluster.nodeVolumes(node) {
		pv := byHandle[v.Name]
		if pv == nil || pv.Status.Phase != v1.VolumeBound || pv.Spec.ClaimRef == nil {
			continue
		}
		b := claimed{volume: v, pv: pv}
		ref := pv.Spec.ClaimRef
		if pvc, err := l.Claims.PersistentVolumeClaims(ref.Namespace).Get(ref.Name); err == nil &&
			pvc.Spec.VolumeName == pv.Name && (ref.UID == "" || ref.UID == pvc.UID) {
			b.pvc = pvc
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].volume.Name < out[j].volume.Name })
	return out
}

func (l *LostNodes) reportLost(ctx context.Context, b claimed, node string, since time.Time) {
	release := "release is off (--release-volumes-on-lost-node-after): the claim, the PV and the volume object are kept until the node returns or an administrator acts"
	if l.ReleaseAfter > 0 {
		release = fmt.Sprintf("release is on: the claim is deleted once the node has been gone for %s (--release-volumes-on-lost-node-after)", l.ReleaseAfter)
	}
	msg := fmt.Sprintf("volume %s is on node %s, whose Node object has left the cluster (absent for %s, since %s); %s",
		b.volume.Name, node, l.now().Sub(since).Round(time.Second), since.UTC().Format(time.RFC3339), release)
	l.event(b, v1.EventTypeWarning, ReasonVolumeOnLostNode, msg)
	klog.FromContext(ctx).V(2).Info("Volume on a lost node", "node", node, "volumeID", b.volume.Name, "pv", b.pv.Name)
}

// release deletes the claims of node's bound volumes (the node is confirmed
// absent), saying so on each claim and PV first.
func (l *LostNodes) release(ctx context.Context, node string, since time.Time, bound []claimed) error {
	logger := klog.FromContext(ctx).WithValues("node", node)
	for _, b := range bound {
		pvc := b.pvc
		if pvc == nil || pvc.DeletionTimestamp != nil {
			continue
		}
		what := "the PV is deleted with the volume object; the storage on the node is removed only if the node comes back"
		if b.pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete {
			what = fmt.Sprintf("the PV has reclaim policy %s and is left as it is", b.pv.Spec.PersistentVolumeReclaimPolicy)
		}
		msg := fmt.Sprintf("plinth deletes claim %s/%s: its volume %s is on node %s, whose Node object has been absent for %s (longer than --release-volumes-on-lost-node-after=%s); a pod that uses it can get a new claim on another node; %s",
			pvc.Namespace, pvc.Name, b.volume.Name, node, l.now().Sub(since).Round(time.Second), l.ReleaseAfter, what)
		l.event(b, v1.EventTypeWarning, ReasonVolumeReleased, msg)
		uid := pvc.UID
		err := l.Client.CoreV1().PersistentVolumeClaims(pvc.Namespace).Delete(ctx, pvc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("release claim %s/%s of volume %s on lost node %s: %w", pvc.Namespace, pvc.Name, b.volume.Name, node, err)
		}
		logger.Info("Released the claim of a volume on a lost node", "pvc", klog.KObj(pvc), "pv", b.pv.Name, "volumeID", b.volume.Name)
	}
	return nil
}

// event records an event on the PV and on its claim, when known.
func (l *LostNodes) event(b claimed, kind, reason, msg string) {
	if l.Events == nil {
		return
	}
	l.Events.Event(b.pv, kind, reason, msg)
	if b.pvc != nil {
		l.Events.Event(b.pvc, kind, reason, msg)
	}
}
