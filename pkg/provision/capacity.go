package provision

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// Labels on the CSIStorageCapacity objects plinth owns.
const (
	labelManagedBy = "app.kubernetes.io/managed-by"
	labelDriver    = "plinth.example.com/driver"
)

// CapacityPublisher keeps one CSIStorageCapacity per node and StorageClass
// of plinth's: what the node's matching pools can still give, with the
// volumes being created already taken off, so the scheduler and plinth
// agree on what fits.
type CapacityPublisher struct {
	Client      kubernetes.Interface
	Classes     storagelisters.StorageClassLister
	Cluster     *Cluster
	Controller  *volume.Controller
	Driver      string
	TopologyKey string
	Namespace   string
	// Interval between full passes; changes to volume or node objects
	// trigger a pass sooner.
	Interval time.Duration
	// Published, when set, is a cache of the objects in Namespace that
	// carry plinth's labels (CapacitySelector): a pass compares against it
	// rather than listing them from the API server, which at a thousand
	// nodes was a thousand objects read several times a second while
	// claims were being made. Without it each pass lists them.
	Published storagelisters.CSIStorageCapacityNamespaceLister
	// ClassInformer, when set, is the StorageClasses' informer: a class
	// added, changed or removed brings a full pass at once.
	ClassInformer cache.SharedIndexInformer
}

// CapacitySelector selects the CSIStorageCapacity objects plinth's
// controller for driver owns.
func CapacitySelector(driver string) string {
	return labelManagedBy + "=plinth," + labelDriver + "=" + driver
}

// Run publishes until ctx ends.
func (p *CapacityPublisher) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("capacity")
	interval := p.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	if p.ClassInformer != nil {
		// A class added or changed is every node's: a full pass.
		reg, err := p.ClassInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { p.Cluster.NotifyAll() },
			UpdateFunc: func(any, any) { p.Cluster.NotifyAll() },
			DeleteFunc: func(any) { p.Cluster.NotifyAll() },
		})
		if err != nil {
			return err
		}
		defer func() { _ = p.ClassInformer.RemoveEventHandler(reg) }()
	}
	full := true
	var lastFull time.Time
	for {
		changed := p.Cluster.Changed()
		nodes, all := p.Cluster.TakeDirty()
		// The interval counts from the last full pass, not from the last
		// change: at a thousand nodes a change comes more often than the
		// interval, and the full pass would never come.
		full = full || all || time.Since(lastFull) >= interval
		var err error
		if full {
			lastFull = time.Now()
			err = p.Sync(ctx)
		} else {
			err = p.SyncNodes(ctx, nodes)
		}
		if err != nil && ctx.Err() == nil {
			logger.Error(err, "Publishing storage capacity")
			full = true // what failed is not known: all of it again
		} else {
			full = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			// Coalesce a burst of changes (many PVCs at once) into one pass.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
		case <-time.After(interval):
			full = true
		}
	}
}

func capacityName(class, node string) string {
	sum := sha256.Sum256([]byte(class + "\x00" + node))
	return "plinth-" + hex.EncodeToString(sum[:10])
}

// Sync makes the CSIStorageCapacity objects match the nodes and classes now.
func (p *CapacityPublisher) Sync(ctx context.Context) error {
	return p.sync(ctx, nil)
}

// SyncNodes is Sync for these nodes' objects only: those of the nodes
// whose volumes or PlinthNode changed. A node that has gone loses its
// objects.
func (p *CapacityPublisher) SyncNodes(ctx context.Context, nodes []string) error {
	if len(nodes) == 0 {
		return nil
	}
	only := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		only[n] = true
	}
	return p.sync(ctx, only)
}

// sync publishes the nodes in only, or every node when only is nil.
func (p *CapacityPublisher) sync(ctx context.Context, only map[string]bool) error {
	classes, err := p.Classes.List(labels.Everything())
	if err != nil {
		return err
	}
	want := map[string]*storagev1.CSIStorageCapacity{}
	var errs []error
	for _, sc := range classes {
		if sc.Provisioner != p.Driver {
			continue
		}
		params := map[string]string{}
		for k, v := range sc.Parameters {
			if k != ParamFsType {
				params[k] = v
			}
		}
		parsed, err := volume.ParseParams(params)
		if err != nil {
			continue // the provisioner reports a bad class on each PVC
		}
		for _, n := range p.plinthNodes(only) {
			if !hasPoolFor(n, parsed) {
				// No object rather than a zero one: the scheduler treats a
				// node without one as having no room, and the objects stay
				// classes × nodes that can serve them, not classes × nodes.
				continue
			}
			avail, maxVol, err := p.Controller.Capacity(ctx, []string{n.Name}, parsed, "", "")
			if err != nil {
				errs = append(errs, fmt.Errorf("capacity of node %s: %w", n.Name, err))
				continue
			}
			name := capacityName(sc.Name, n.Name)
			want[name] = &storagev1.CSIStorageCapacity{
				ObjectMeta: metav1.ObjectMeta{
					Name: name, Namespace: p.Namespace,
					Labels: map[string]string{labelManagedBy: "plinth", labelDriver: p.Driver},
				},
				NodeTopology:      &metav1.LabelSelector{MatchLabels: map[string]string{p.TopologyKey: n.Name}},
				StorageClassName:  sc.Name,
				Capacity:          resource.NewQuantity(avail, resource.BinarySI),
				MaximumVolumeSize: resource.NewQuantity(maxVol, resource.BinarySI),
			}
		}
	}
	api := p.Client.StorageV1().CSIStorageCapacities(p.Namespace)
	have, err := p.published(ctx, only, classes)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, cur := range have {
		if only != nil && (cur.NodeTopology == nil || !only[cur.NodeTopology.MatchLabels[p.TopologyKey]]) {
			continue // another node's: not looked at in this pass
		}
		w, ok := want[cur.Name]
		if !ok {
			if err := api.Delete(ctx, cur.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, err)
			}
			continue
		}
		delete(want, cur.Name)
		if cur.Capacity != nil && cur.Capacity.Cmp(*w.Capacity) == 0 && cur.MaximumVolumeSize != nil && cur.MaximumVolumeSize.Cmp(*w.MaximumVolumeSize) == 0 {
			continue
		}
		cur = cur.DeepCopy() // a cached object is shared
		cur.Capacity, cur.MaximumVolumeSize = w.Capacity, w.MaximumVolumeSize
		if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			errs = append(errs, err)
		}
	}
	for _, w := range want {
		if _, err := api.Create(ctx, w, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// plinthNodes are the PlinthNodes in only (every one when only is nil).
func (p *CapacityPublisher) plinthNodes(only map[string]bool) []*v1alpha1.PlinthNode {
	if only == nil {
		return p.Cluster.PlinthNodes()
	}
	var out []*v1alpha1.PlinthNode
	for name := range only {
		if n, err := p.Cluster.PlinthNode(name); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// published are plinth's CSIStorageCapacity objects as they are now: from
// the cache when there is one (a stale entry costs a conflict or an
// AlreadyExists, and the next pass puts it right), else from the API.
//
// For a pass over some nodes (only) with a cache, each object is looked up
// by its name (class and node) rather than by listing all of them: a
// heartbeat's pass reads a node's objects, not a thousand nodes'. An
// object of a class that is gone is left to the next full pass.
func (p *CapacityPublisher) published(ctx context.Context, only map[string]bool, classes []*storagev1.StorageClass) ([]*storagev1.CSIStorageCapacity, error) {
	sel, err := labels.Parse(CapacitySelector(p.Driver))
	if err != nil {
		return nil, err
	}
	if p.Published != nil && only != nil {
		var out []*storagev1.CSIStorageCapacity
		for _, sc := range classes {
			if sc.Provisioner != p.Driver {
				continue
			}
			for node := range only {
				o, err := p.Published.Get(capacityName(sc.Name, node))
				if apierrors.IsNotFound(err) {
					continue
				}
				if err != nil {
					return nil, err
				}
				if sel.Matches(labels.Set(o.Labels)) {
					out = append(out, o)
				}
			}
		}
		return out, nil
	}
	if p.Published != nil {
		return p.Published.List(sel)
	}
	list, err := p.Client.StorageV1().CSIStorageCapacities(p.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, err
	}
	out := make([]*storagev1.CSIStorageCapacity, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out, nil
}

// hasPoolFor reports whether node has a pool (healthy or not) that a class
// with these parameters may use: its pool name and backend, when given.
func hasPoolFor(n *v1alpha1.PlinthNode, p volume.Params) bool {
	for _, pl := range n.Status.Pools {
		if (p.Pool == "" || pl.Name == p.Pool) && (p.Backend == "" || pl.Backend == p.Backend) {
			return true
		}
	}
	return false
}
