package nodestatus

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// Reporter writes one node's PlinthNode status: its pools (healthy or
// not), its devices, a heartbeat; and records an event on the Node when a
// pool or a device changes health.
type Reporter struct {
	NodeName string
	Version  string
	// Pools reads every pool of the node (node.Local.PoolHealth); a
	// pool that cannot be read is published unhealthy. Nil: no pools.
	Pools func(ctx context.Context) []node.PoolHealth
	// Devices, when set, lists the node's devices.
	Devices func() []v1alpha1.DeviceStatus
	// Disks, when set, lists the node's disks (with disk rules).
	Disks func() []v1alpha1.DiskStatus
	// OnPoolChange, when set, hears that a pool's health or message
	// changed since the last status (the reconciler looks at the pool's
	// volumes again).
	OnPoolChange func()
	Plinth       versioned.Interface
	Core         kubernetes.Interface
	Events       record.EventRecorder
	// Transfer, when set, is where the node serves transfers and the
	// certificate it presents (published for its peers to pin).
	Transfer *v1alpha1.TransferEndpoint
	// Interval is the heartbeat (default 30s).
	Interval time.Duration
	// Poll is how often the pools are read between heartbeats (default
	// 5s, at most Interval): a change (space taken from outside plinth, a
	// pool gone bad) is written at once, an unchanged status only at the
	// heartbeat.
	Poll time.Duration

	mu         sync.Mutex
	lastStatus *v1alpha1.NodeStatus
	lastWrite  time.Time
	lastRead   time.Time // when the last written status read the pools
	// lastSequence is the last written status's sequence.
	lastSequence int64
	// written is the PlinthNode as the last status write returned it: the
	// next write starts from it (its resourceVersion guards it), so that a
	// heartbeat is one request; a conflict reads the object again.
	written *v1alpha1.PlinthNode
}

func (p *Reporter) interval() time.Duration {
	if p.Interval <= 0 {
		return 30 * time.Second
	}
	return p.Interval
}

func (p *Reporter) poll() time.Duration {
	d := p.Poll
	if d <= 0 {
		d = 5 * time.Second
	}
	return min(d, p.interval())
}

// Run reads the status every poll period and publishes it when it changed
// or the heartbeat is due, until ctx ends.
func (p *Reporter) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("nodestatus")
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := p.Publish(ctx, false); err != nil {
			logger.Error(err, "Publishing node status")
		}
	}, p.poll())
	return nil
}

// health is one thing whose health the Node's events follow.
type health struct {
	key        string // stable across statuses
	healthy    bool
	sick, well string // the event messages
}

// poolEvents records an event on the Node when a pool becomes unreadable
// or readable again.
func (p *Reporter) poolEvents(pools []v1alpha1.PoolStatus) {
	var before, now []health
	if p.lastStatus != nil {
		for _, p := range p.lastStatus.Pools {
			before = append(before, health{key: p.Name, healthy: p.Healthy})
		}
	}
	for _, p := range pools {
		now = append(now, health{key: p.Name, healthy: p.Healthy,
			sick: fmt.Sprintf("pool %s cannot be read: %s; no new volumes are placed on it", p.Name, p.Message),
			well: fmt.Sprintf("pool %s is readable again", p.Name)})
	}
	p.healthEvents("Pool", before, now)
	// A pool that loses redundancy (raid1 or a disk pool short of a disk)
	// stays healthy; it gets an event of its own.
	was := map[string]string{}
	if p.lastStatus != nil {
		for _, q := range p.lastStatus.Pools {
			was[q.Name] = q.Message
		}
	}
	changed := false
	for _, q := range pools {
		if q.Healthy && strings.HasPrefix(q.Message, "degraded") && was[q.Name] != q.Message {
			p.event(v1.EventTypeWarning, "PoolDegraded", fmt.Sprintf("pool %s is %s", q.Name, q.Message))
		}
		changed = changed || p.lastStatus != nil && was[q.Name] != q.Message
	}
	if changed && p.OnPoolChange != nil {
		p.OnPoolChange()
	}
}

// diskEvents records, on the Node and the PlinthNode, every disk of a pool
// that went missing or came back since the last status.
func (p *Reporter) diskEvents(disks []v1alpha1.DiskStatus) {
	was := map[string]string{}
	if p.lastStatus != nil {
		for _, d := range p.lastStatus.Disks {
			was[d.ID] = d.State
		}
	}
	for _, d := range disks {
		if d.Pool == "" {
			continue
		}
		switch prev, seen := was[d.ID]; {
		case d.State == "missing" && prev != "missing":
			p.event(v1.EventTypeWarning, "DiskMissing", fmt.Sprintf("disk %s of pool %s (last seen as %s) is missing", d.ID, d.Pool, d.Name))
		case seen && prev == "missing" && d.State != "missing":
			p.event(v1.EventTypeNormal, "DiskBack", fmt.Sprintf("disk %s of pool %s is back as %s", d.ID, d.Pool, d.Name))
		}
	}
}

// event records an event about the node's storage on both the Node and
// its PlinthNode.
func (p *Reporter) event(kind, reason, msg string) {
	if p.Events == nil {
		return
	}
	p.Events.Event(&v1.ObjectReference{Kind: "Node", Name: p.NodeName, UID: types.UID(p.NodeName)}, kind, reason, msg)
	p.Events.Event(&v1.ObjectReference{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "PlinthNode", Name: p.NodeName}, kind, reason, msg)
}

// deviceEvents records an event on the Node for every device whose health
// changed since the last status (and for unhealthy ones at the first).
func (p *Reporter) deviceEvents(devs []v1alpha1.DeviceStatus) {
	var before, now []health
	if p.lastStatus != nil {
		for _, d := range p.lastStatus.Devices {
			before = append(before, health{key: d.Resource + "/" + d.ID, healthy: d.Healthy})
		}
	}
	for _, d := range devs {
		now = append(now, health{key: d.Resource + "/" + d.ID, healthy: d.Healthy,
			sick: fmt.Sprintf("%s device %s is unhealthy: not advertised to the kubelet until it recovers", d.Resource, d.ID),
			well: fmt.Sprintf("%s device %s is healthy again", d.Resource, d.ID)})
	}
	p.healthEvents("Device", before, now)
}

// healthEvents records <kind>Unhealthy for what is unhealthy now and was
// healthy (or unknown) before, and <kind>Healthy for what recovered.
func (p *Reporter) healthEvents(kind string, before, now []health) {
	if p.Events == nil {
		return
	}
	was := map[string]bool{}
	for _, h := range before {
		was[h.key] = h.healthy
	}
	ref := &v1.ObjectReference{Kind: "Node", Name: p.NodeName, UID: types.UID(p.NodeName)}
	record := func(typ, reason, msg string) {
		if kind == "Pool" {
			p.event(typ, reason, msg) // storage: on the PlinthNode too
			return
		}
		p.Events.Event(ref, typ, reason, msg)
	}
	for _, h := range now {
		prev, seen := was[h.key]
		switch {
		case !h.healthy && (!seen || prev):
			record(v1.EventTypeWarning, kind+"Unhealthy", h.sick)
		case h.healthy && seen && !prev:
			record(v1.EventTypeNormal, kind+"Healthy", h.well)
		}
	}
}

// PublishAfter makes sure a status that read the pools after t is out
// (creates finishing together share one write) and returns its sequence.
func (p *Reporter) PublishAfter(ctx context.Context, t time.Time) (sequence int64, err error) {
	p.mu.Lock()
	done, seq := p.lastRead.After(t), p.lastSequence
	p.mu.Unlock()
	if done {
		return seq, nil
	}
	if err := p.Publish(ctx, true); err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastSequence, nil
}

// Publish writes the node's pools and devices to its PlinthNode; unless
// force, only when they changed or the heartbeat is due.
func (p *Reporter) Publish(ctx context.Context, force bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	read := time.Now()
	st := v1alpha1.NodeStatus{Version: p.Version, Transfer: p.Transfer}
	var infos []volume.PoolInfo
	var failed []node.PoolHealth
	if p.Pools != nil {
		for _, ph := range p.Pools(ctx) {
			if ph.Err != nil {
				failed = append(failed, ph)
				continue
			}
			infos = append(infos, volume.PoolInfo{Name: ph.Name, Backend: ph.Backend, Capabilities: ph.Capabilities, Stats: ph.Stats})
		}
	}
	for _, pi := range infos {
		st.Pools = append(st.Pools, v1alpha1.PoolStatus{
			Name: pi.Name, Backend: pi.Backend, Block: pi.Capabilities.Block, FsTypes: pi.Capabilities.FsTypes,
			OwnFs: pi.Capabilities.OwnFs, TotalBytes: pi.Stats.TotalBytes, FreeBytes: pi.Stats.FreeBytes,
			CommittedBytes: pi.Stats.CommittedBytes, AllocatableBytes: pi.Stats.AllocatableBytes(),
			ProvisionedBytes: pi.Stats.ProvisionedBytes, Volumes: pi.Stats.Volumes, Healthy: true,
			LargestVolumeBytes: pi.Stats.LargestVolumeBytes, Message: degradedMessage(pi.Stats.Degraded),
		})
	}
	for _, ph := range failed {
		st.Pools = append(st.Pools, v1alpha1.PoolStatus{Name: ph.Name, Backend: ph.Backend, Healthy: false, Message: ph.Err.Error()})
	}
	p.poolEvents(st.Pools)
	if p.Disks != nil {
		st.Disks = p.Disks()
		p.diskEvents(st.Disks)
	}
	st.PoolCount = len(st.Pools)
	if p.Devices != nil {
		st.Devices = p.Devices()
		st.DeviceCount = len(st.Devices)
		p.deviceEvents(st.Devices)
	}
	if !force && p.lastStatus != nil && reflect.DeepEqual(*p.lastStatus, st) && time.Since(p.lastWrite) < p.interval() {
		return nil
	}
	st.HeartbeatTime = metav1.Now()
	written, err := p.write(ctx, st)
	if err != nil {
		return err
	}
	p.lastSequence = written.Status.Sequence
	st.HeartbeatTime, st.Sequence = metav1.Time{}, 0
	p.lastStatus, p.lastWrite, p.lastRead = &st, time.Now(), read
	return nil
}

// write writes st as the PlinthNode's status, its sequence one past the
// stored one: from the object the last write returned while nothing else
// changed it, else from a fresh read (made first if it does not exist).
func (p *Reporter) write(ctx context.Context, st v1alpha1.NodeStatus) (*v1alpha1.PlinthNode, error) {
	api := p.Plinth.PlinthV1alpha1().PlinthNodes()
	n := p.written
	p.written = nil
	for attempt := 0; ; attempt++ {
		if n == nil {
			var err error
			if n, err = p.read(ctx); err != nil {
				return nil, err
			}
		}
		n = n.DeepCopy()
		s := st
		s.Sequence = n.Status.Sequence + 1
		n.Status = s
		out, err := api.UpdateStatus(ctx, n, metav1.UpdateOptions{})
		if err == nil {
			p.written = out
			return out, nil
		}
		if attempt == 0 && (apierrors.IsConflict(err) || apierrors.IsNotFound(err)) {
			n = nil // changed or removed since: read it again
			continue
		}
		return nil, fmt.Errorf("write PlinthNode %s status: %w", p.NodeName, err)
	}
}

// read gets the node's PlinthNode, making it when it does not exist.
func (p *Reporter) read(ctx context.Context) (*v1alpha1.PlinthNode, error) {
	api := p.Plinth.PlinthV1alpha1().PlinthNodes()
	n, err := api.Get(ctx, p.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj := &v1alpha1.PlinthNode{ObjectMeta: metav1.ObjectMeta{Name: p.NodeName}}
		// Owned by the Kubernetes Node: when the node leaves, so does this.
		if kn, nerr := p.Core.CoreV1().Nodes().Get(ctx, p.NodeName, metav1.GetOptions{}); nerr == nil {
			obj.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: kn.Name, UID: kn.UID}}
		}
		if n, err = api.Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create PlinthNode %s: %w", p.NodeName, err)
		}
		if err != nil {
			n, err = api.Get(ctx, p.NodeName, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read PlinthNode %s: %w", p.NodeName, err)
	}
	return n, nil
}

// degradedMessage is a healthy pool's status message: why it runs with
// less redundancy, if it does.
func degradedMessage(why string) string {
	if why == "" {
		return ""
	}
	return "degraded: " + why
}
