package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	typedv1alpha1 "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/typed/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/informers/externalversions"
	listers "github.com/plinth-dev/plinth/pkg/generated/listers/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// ErrInProgress: the node has not finished yet; ask again later. (The
// same error as volume.ErrInProgress, which pkg/csi answers ABORTED.)
var ErrInProgress = volume.ErrInProgress

// Cluster is the controller's view of the plinth nodes and volume objects:
// a volume.NodeSet whose nodes are carried by PlinthVolume objects. It holds
// the in-memory reservations of volumes being created, so that concurrent
// creates never promise the same bytes twice (the check and the reservation
// run under a per-node lock; see remoteNode.reserveAndRecord). The objects
// it hands out are the informers' own: read them, never change them.
type Cluster struct {
	client        typedv1alpha1.PlinthVolumeInterface   // writes volume objects
	snapClient    typedv1alpha1.PlinthSnapshotInterface // writes snapshot objects
	volumes       cache.SharedIndexInformer
	snapshots     cache.SharedIndexInformer
	nodes         cache.SharedIndexInformer
	volumeStore   listers.PlinthVolumeLister
	snapshotStore listers.PlinthSnapshotLister
	nodeStore     listers.PlinthNodeLister
	nodeGone      func(name string) bool
	// Wait is how long a call waits for a node before answering
	// ErrInProgress.
	Wait time.Duration
	// Lost, when set, says when the volumes of a node that has left may
	// be let go (LostNodes.Releasable); nil keeps them.
	Lost *LostNodes

	mu        sync.Mutex
	nodeLocks map[string]*sync.Mutex // node → one capacity check and reservation at a time on it
	// reserved: node → volume ID → reservation not yet seen Ready; by
	// node, so that counting one node's (every node, each capacity pass)
	// does not walk every other node's.
	reserved map[string]map[string]reservation
	changed  chan struct{} // closed and replaced on every change
	// dirty are the nodes whose objects changed since TakeDirty last
	// took them; allDirty: a change that was not one node's.
	dirty    map[string]bool
	allDirty bool
	// serialCreates restores the lock this package had before issue 11:
	// one for every node, held across the volume object's create. Only
	// the benchmark that compares the two sets it.
	serialCreates bool
	serialMu      sync.Mutex
}

type reservation struct {
	node, pool string
	bytes      int64
	// seen: the volume object has been in the cache; once it is gone
	// again the reservation goes too (nothing is being created any more).
	seen bool
}

// NewCluster watches the volume, snapshot and node objects through
// factory's informers; nodeGone reports whether a Kubernetes Node has left
// the cluster.
func NewCluster(client versioned.Interface, factory externalversions.SharedInformerFactory, nodeGone func(string) bool) (*Cluster, error) {
	volumes, nodes := factory.Plinth().V1alpha1().PlinthVolumes(), factory.Plinth().V1alpha1().PlinthNodes()
	snapshots := factory.Plinth().V1alpha1().PlinthSnapshots()
	c := &Cluster{
		client:        client.PlinthV1alpha1().PlinthVolumes(),
		snapClient:    client.PlinthV1alpha1().PlinthSnapshots(),
		volumes:       volumes.Informer(),
		snapshots:     snapshots.Informer(),
		nodes:         nodes.Informer(),
		volumeStore:   volumes.Lister(),
		snapshotStore: snapshots.Lister(),
		nodeStore:     nodes.Lister(),
		nodeGone:      nodeGone,
		Wait:          30 * time.Second,
		reserved:      map[string]map[string]reservation{},
		nodeLocks:     map[string]*sync.Mutex{},
		changed:       make(chan struct{}),
		dirty:         map[string]bool{},
	}
	// Volume objects by node label: finding a node's volumes (its
	// reservations, whether it still holds any) reads only those.
	if err := c.volumes.AddIndexers(cache.Indexers{byNode: func(obj any) ([]string, error) {
		v, ok := obj.(*v1alpha1.PlinthVolume)
		if !ok {
			return nil, nil
		}
		return []string{v.Labels[v1alpha1.LabelNode]}, nil
	}}); err != nil {
		return nil, err
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.notify(objectNode(obj)) },
		UpdateFunc: func(_, obj any) { c.notify(objectNode(obj)) },
		DeleteFunc: func(obj any) { c.notify(objectNode(obj)) },
	}
	for _, inf := range []cache.SharedIndexInformer{c.volumes, c.snapshots, c.nodes} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// HasSynced reports whether the caches are filled.
func (c *Cluster) HasSynced() bool {
	return c.volumes.HasSynced() && c.snapshots.HasSynced() && c.nodes.HasSynced()
}

// Changed returns a channel closed at the next change of any object.
func (c *Cluster) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// notify marks node's objects changed ("": not one node's) and wakes
// whoever waits on Changed.
func (c *Cluster) notify(node string) {
	c.mu.Lock()
	if node == "" {
		c.allDirty = true
	} else {
		c.dirty[node] = true
	}
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// NotifyAll marks every node changed (a StorageClass came or went).
func (c *Cluster) NotifyAll() { c.notify("") }

// TakeDirty returns the nodes whose objects (PlinthNode, volumes,
// snapshots) changed since the last call, and all: a change that was not
// one node's. A capacity pass then recounts only those: at a thousand
// nodes, each node's heartbeat no longer recounts every node.
func (c *Cluster) TakeDirty() (nodes []string, all bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n := range c.dirty {
		nodes = append(nodes, n)
	}
	all = c.allDirty
	c.dirty, c.allDirty = map[string]bool{}, false
	return nodes, all
}

// objectNode is the node a PlinthNode, PlinthVolume or PlinthSnapshot
// belongs to; "" for anything else.
func objectNode(obj any) string {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	switch o := obj.(type) {
	case *v1alpha1.PlinthNode:
		return o.Name
	case *v1alpha1.PlinthVolume:
		if o.Spec.NodeName != "" {
			return o.Spec.NodeName
		}
		return o.Labels[v1alpha1.LabelNode]
	case *v1alpha1.PlinthSnapshot:
		return o.Spec.NodeName
	}
	return ""
}

var _ volume.NodeSet = (*Cluster)(nil)

const byNode = "node"

// NodeIDs implements volume.NodeSet: every node with a PlinthNode or a
// volume object, so that volumes on a lost node are still found.
func (c *Cluster) NodeIDs() []string {
	seen := map[string]bool{}
	for _, key := range c.nodes.GetStore().ListKeys() {
		seen[key] = true
	}
	for _, n := range c.volumes.GetIndexer().ListIndexFuncValues(byNode) {
		if n != "" {
			seen[n] = true
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Node implements volume.NodeSet.
func (c *Cluster) Node(id string) (volume.Node, bool) {
	if _, ok, _ := c.nodes.GetStore().GetByKey(id); ok {
		return &remoteNode{c: c, name: id}, true
	}
	if objs, _ := c.volumes.GetIndexer().ByIndex(byNode, id); len(objs) > 0 {
		return &remoteNode{c: c, name: id}, true
	}
	return nil, false
}

var _ volume.VolumeIndex = (*Cluster)(nil)

// VolumeNode implements volume.VolumeIndex: the node label of the volume
// object keyed by id (the object's name is the volume ID).
func (c *Cluster) VolumeNode(id string) (string, bool) {
	v, err := c.volumeStore.Get(id)
	if err != nil {
		return "", false
	}
	n := v.Labels[v1alpha1.LabelNode]
	return n, n != ""
}

// reservedFor reports whether a create of volume id holds a reservation.
// release gives back id's in-memory reservation, if any.
func (c *Cluster) release(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for node := range c.reserved {
		c.dropReservation(node, id)
	}
}

// dropReservation forgets node's reservation for id (under c.mu).
func (c *Cluster) dropReservation(node, id string) {
	delete(c.reserved[node], id)
	if len(c.reserved[node]) == 0 {
		delete(c.reserved, node)
	}
}

// settle is whether node's reservation r for id still holds, noting that
// its object has been seen; one the node has answered for, or whose
// object came and went, is let go of (under c.mu).
func (c *Cluster) settle(node, id string, r reservation) bool {
	v, ok := c.Volume(id)
	switch {
	case ok && !pending(v):
		c.dropReservation(node, id) // the node has answered: its status counts it
		return false
	case ok && !r.seen:
		r.seen = true
		c.reserved[node][id] = r
	case !ok && r.seen:
		c.dropReservation(node, id) // the object came and went
		return false
	}
	return true
}

// waitGone waits up to limit for volume object id to leave the cache.
func (c *Cluster) waitGone(ctx context.Context, id string, limit time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		ch := c.Changed()
		if _, ok := c.Volume(id); !ok {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

func (c *Cluster) reservedFor(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for node, rs := range c.reserved {
		if r, ok := rs[id]; ok && c.settle(node, id, r) {
			return true
		}
	}
	return false
}

// reserve checks that pool on node still has room for bytes once every
// create in flight is counted, and records the reservation of volume id;
// giveBack returns it (a failed write of the volume object). One check and
// reservation per node runs at a time, so two creates are never promised
// the same bytes; the lock is let go before the caller's API write, so
// neither this node's next create nor any other node's waits for it. The
// reservation lasts until the node answers for the volume.
func (c *Cluster) reserve(node, poolName, id string, bytes int64) (giveBack func(), err error) {
	defer c.lockNode(node)()
	infos, err := c.poolInfos(node)
	if err != nil {
		return nil, err
	}
	found := false
	for _, pi := range infos {
		if pi.Name != poolName {
			continue
		}
		found = true
		if free := pi.Stats.MaxVolumeBytes(); free < bytes {
			return nil, fmt.Errorf("%w: pool %s on node %s has %s free, %s requested", pool.ErrNoSpace, poolName, node,
				volume.FormatBytes(free), volume.FormatBytes(bytes))
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: node %s has no healthy pool %s", pool.ErrNoSpace, node, poolName)
	}
	c.mu.Lock()
	if c.reserved[node] == nil {
		c.reserved[node] = map[string]reservation{}
	}
	c.reserved[node][id] = reservation{node: node, pool: poolName, bytes: bytes}
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		c.dropReservation(node, id)
		c.mu.Unlock()
	}, nil
}

// lockNode takes node's create lock: capacity checks and reservations on
// one node run one at a time, on different nodes in parallel.
func (c *Cluster) lockNode(node string) func() {
	c.mu.Lock()
	l, ok := c.nodeLocks[node]
	if !ok {
		l = &sync.Mutex{}
		c.nodeLocks[node] = l
	}
	c.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// nodeVolumes returns the volume objects labelled with node.
func (c *Cluster) nodeVolumes(node string) []*v1alpha1.PlinthVolume {
	objs, _ := c.volumes.GetIndexer().ByIndex(byNode, node)
	out := make([]*v1alpha1.PlinthVolume, 0, len(objs))
	for _, obj := range objs {
		if v, ok := obj.(*v1alpha1.PlinthVolume); ok {
			out = append(out, v)
		}
	}
	return out
}

// PlinthNode returns the node object named name from the cache.
func (c *Cluster) PlinthNode(name string) (*v1alpha1.PlinthNode, error) {
	n, err := c.nodeStore.Get(name)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: plinth has no status from node %s", volume.ErrNodeGone, name)
	}
	return n, err
}

// PlinthNodes returns every node object, sorted by name.
func (c *Cluster) PlinthNodes() []*v1alpha1.PlinthNode {
	out, _ := c.nodeStore.List(labels.Everything())
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Volume returns the volume object with this ID from the cache.
func (c *Cluster) Volume(id string) (*v1alpha1.PlinthVolume, bool) {
	v, err := c.volumeStore.Get(id)
	if err != nil {
		return nil, false
	}
	return v, true
}

// Volumes returns every volume object, sorted by name.
func (c *Cluster) Volumes() []*v1alpha1.PlinthVolume {
	out, _ := c.volumeStore.List(labels.Everything())
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// pending reports whether a volume object still holds a reservation the
// node has not counted: it is neither made (Ready) nor refused (Failed).
// uncounted: a Ready volume whose node's pool numbers, as far as this
// controller has them (status sequence seen), do not include it yet.
func uncounted(v *v1alpha1.PlinthVolume, seen int64) bool {
	return v.DeletionTimestamp == nil && v.Status.Phase == v1alpha1.VolumeReady && v.Status.CountedIn > seen
}

func pending(v *v1alpha1.PlinthVolume) bool {
	return v.DeletionTimestamp == nil && (v.Status.Phase == "" || v.Status.Phase == v1alpha1.VolumePending)
}

// reservedBytes is what volumes being created on node/pool hold: the
// in-memory reservations and the pending objects (which survive a restart
// of the controller), each counted once.
func (c *Cluster) reservedBytes(node, poolName string) int64 {
	var total int64
	counted := map[string]bool{}
	var seen int64 // the node's status this controller has
	if n, err := c.nodeStore.Get(node); err == nil {
		seen = n.Status.Sequence
	}
	for _, v := range c.nodeVolumes(node) {
		if v.Spec.NodeName == node && v.Spec.Pool == poolName && (pending(v) || uncounted(v, seen)) {
			total += v.Spec.CapacityBytes
			counted[v.Name] = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, r := range c.reserved[node] {
		if r.pool == poolName && c.settle(node, id, r) && !counted[id] {
			total += r.bytes
		}
	}
	return total
}

// poolInfos is node's pools with the reservations taken off.
func (c *Cluster) poolInfos(node string) ([]volume.PoolInfo, error) {
	pn, err := c.PlinthNode(node)
	if err != nil {
		return nil, err
	}
	var out []volume.PoolInfo
	for _, p := range pn.Status.Pools {
		if !p.Healthy {
			continue
		}
		out = append(out, volume.PoolInfo{
			Name:    p.Name,
			Backend: p.Backend,
			Capabilities: pool.Capabilities{
				Block: p.Block, FsTypes: p.FsTypes, OwnFs: p.OwnFs,
			},
			Stats: pool.Stats{
				TotalBytes: p.TotalBytes, FreeBytes: p.FreeBytes,
				CommittedBytes:   p.CommittedBytes + c.reservedBytes(node, p.Name),
				ProvisionedBytes: p.ProvisionedBytes, Volumes: p.Volumes,
				LargestVolumeBytes: p.LargestVolumeBytes,
			},
		})
	}
	return out, nil
}

// waitVolume waits until done says the volume object id is where the
// caller wants it, or c.Wait passes (ErrInProgress).
func (c *Cluster) waitVolume(ctx context.Context, id string, done func(v *v1alpha1.PlinthVolume, exists bool) (bool, error)) error {
	return c.wait(ctx, "volume "+id, func() (bool, error) {
		v, ok := c.Volume(id)
		return done(v, ok)
	})
}

// wait calls done at every change of the objects until it says finished or
// c.Wait passes (ErrInProgress, for what).
func (c *Cluster) wait(ctx context.Context, what string, done func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, c.Wait)
	defer cancel()
	for {
		ch := c.Changed()
		if finished, err := done(); finished || err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%s: %w", what, ErrInProgress)
			}
			return ctx.Err()
		}
	}
}

// errorOf turns a node's failure in a volume's status into an error of the
// pool package's kinds.
func errorOf(v *v1alpha1.PlinthVolume) error {
	return nodeError(v.Spec.NodeName, v.Status.Reason, v.Status.Message)
}

// nodeError is a node's failure (a status's reason and message) as an error
// of the pool package's kinds.
func nodeError(node, reason, message string) error {
	kind := errors.New("node error")
	switch reason {
	case v1alpha1.ReasonNoSpace:
		kind = pool.ErrNoSpace
	case v1alpha1.ReasonInvalid:
		kind = pool.ErrInvalid
	case v1alpha1.ReasonUnsupported, v1alpha1.ReasonNoPool:
		kind = pool.ErrUnsupported
	case v1alpha1.ReasonInUse:
		kind = pool.ErrInUse
	case v1alpha1.ReasonNotFound:
		kind = pool.ErrNotFound
	}
	return fmt.Errorf("%w: node %s: %s", kind, node, message)
}

// createObject writes a new volume object; one that exists already (made by
// an earlier life of this controller) is not an error.
func (c *Cluster) createObject(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	_, err := c.client.Create(ctx, v, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// growObject raises a volume object's asked capacity.
func (c *Cluster) growObject(ctx context.Context, id string, capacityBytes int64) error {
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"capacityBytes": capacityBytes}})
	_, err := c.client.Patch(ctx, id, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

func (c *Cluster) deleteObject(ctx context.Context, id string) error {
	err := c.client.Delete(ctx, id, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
