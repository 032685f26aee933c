package inspect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/move"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// DrainRequest is what `kubectl plinth drain` asks.
type DrainRequest struct {
	Node string
	// Parallel is how many moves run at once (default 2).
	Parallel      int
	KeepSourceFor time.Duration
	// Timeout bounds the whole drain (default 1 hour).
	Timeout time.Duration
}

// DrainReport is what a drain did.
type DrainReport struct {
	Node       string           `json:"node"`
	Moved      []MoveReport     `json:"moved"`
	Failed     []MoveReport     `json:"failed,omitempty"`
	CannotMove []UnmovableClaim `json:"cannotMove,omitempty"`
	Evicted    []string         `json:"evicted,omitempty"`
	// NotEvicted are pods left on the node (DaemonSets' and static pods
	// stay; others say why).
	NotEvicted []string `json:"notEvicted,omitempty"`
}

// UnmovableClaim is a claim on the drained node that no move takes, and why.
type UnmovableClaim struct {
	Claim  string `json:"claim"`
	Reason string `json:"reason"`
}

// candidate is a node a drained volume may go to.
type candidate struct {
	name   string
	pools  []v1alpha1.PoolStatus
	labels map[string]string
}

// Drain cordons node, moves every plinth claim on it whose workload can
// move (Parallel at a time, pods evicted through the eviction API), says
// which it cannot move and why, then evicts the node's other pods.
// progress hears each step.
func (c *Client) Drain(ctx context.Context, req DrainRequest, progress func(string)) (DrainReport, error) {
	if req.Parallel <= 0 {
		req.Parallel = 2
	}
	if req.Timeout <= 0 {
		req.Timeout = time.Hour
	}
	if progress == nil {
		progress = func(string) {}
	}
	ctx, cancel := context.WithTimeout(ctx, req.Timeout)
	defer cancel()
	rep := DrainReport{Node: req.Node}
	nodes := c.Core.CoreV1().Nodes()
	if _, err := nodes.Get(ctx, req.Node, metav1.GetOptions{}); err != nil {
		return rep, fmt.Errorf("node %s: %w", req.Node, err)
	}
	// Cordoned first: nothing new lands on the node while it drains, and
	// a moved claim's pod, made again before its rebind, waits.
	if _, err := nodes.Patch(ctx, req.Node, types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{}); err != nil {
		return rep, fmt.Errorf("cordon %s: %w", req.Node, err)
	}
	progress("cordoned " + req.Node)

	plan, cannot, err := c.drainPlan(ctx, req.Node)
	if err != nil {
		return rep, err
	}
	rep.CannotMove = cannot
	for _, u := range cannot {
		progress(fmt.Sprintf("cannot move %s: %s", u.Claim, u.Reason))
	}
	// The moves, Parallel at a time.
	type running struct{ ns, name string }
	var active []running
	next := 0
	for next < len(plan) || len(active) > 0 {
		for next < len(plan) && len(active) < req.Parallel {
			p := plan[next]
			next++
			r, err := c.Move(ctx, MoveRequest{Namespace: p.ns, Claim: p.claim, To: p.to, Evict: true, KeepSourceFor: req.KeepSourceFor})
			if err != nil {
				rep.CannotMove = append(rep.CannotMove, UnmovableClaim{Claim: p.ns + "/" + p.claim, Reason: err.Error()})
				progress(fmt.Sprintf("cannot move %s/%s: %v", p.ns, p.claim, err))
				continue
			}
			progress(fmt.Sprintf("moving %s/%s to %s", p.ns, p.claim, p.to))
			active = append(active, running{r.Namespace, r.Name})
		}
		select {
		case <-ctx.Done():
			return rep, fmt.Errorf("drain of %s: %w (moves still running: %d)", req.Node, ctx.Err(), len(active))
		case <-time.After(time.Second):
		}
		active = slices.DeleteFunc(active, func(a running) bool {
			m, err := c.Plinth.PlinthV1alpha1().PlinthMoves(a.ns).Get(ctx, a.name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			r := moveReport(m)
			switch {
			case m.Status.Phase == v1alpha1.MoveFailed:
				rep.Failed = append(rep.Failed, r)
				progress(r.Line())
				return true
			case m.Status.Phase == v1alpha1.MoveDone && m.Status.RebindTime != nil:
				rep.Moved = append(rep.Moved, r)
				progress(r.Line())
				return true
			}
			return false
		})
	}
	// Then the rest of the node's pods.
	if err := c.evictRest(ctx, req.Node, &rep, progress); err != nil {
		return rep, err
	}
	return rep, nil
}

type planned struct{ ns, claim, to string }

// drainPlan picks a target for each plinth claim on node, or says why
// there is none. Targets are chosen by the most room, counting what this
// drain sends to each.
func (c *Client) drainPlan(ctx context.Context, node string) ([]planned, []UnmovableClaim, error) {
	vols, err := c.Plinth.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelNode + "=" + node})
	if err != nil {
		return nil, nil, err
	}
	here, err := c.Plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, nil, err
	}
	backend := map[string]string{}
	if here != nil {
		for _, p := range here.Status.Pools {
			backend[p.Name] = p.Backend
		}
	}
	cands, err := c.candidates(ctx, node)
	if err != nil {
		return nil, nil, err
	}
	var plan []planned
	var cannot []UnmovableClaim
	sort.Slice(vols.Items, func(i, j int) bool { return vols.Items[i].Spec.CapacityBytes > vols.Items[j].Spec.CapacityBytes })
	for i := range vols.Items {
		v := &vols.Items[i]
		if v.Spec.Claim == "" || v.DeletionTimestamp != nil {
			continue // not a claim's (made through plinth's CSI socket by hand), or going
		}
		ns, claim, _ := strings.Cut(v.Spec.Claim, "/")
		say := func(why string) { cannot = append(cannot, UnmovableClaim{Claim: v.Spec.Claim, Reason: why}) }
		pvc, err := c.Core.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			continue // the claim is gone; so will the volume be
		case err != nil:
			return nil, nil, err
		case pvc.Spec.VolumeName == "" || pvc.Status.Phase != v1.ClaimBound:
			say("the claim is not bound")
			continue
		}
		if slices.Contains(pvc.Spec.AccessModes, v1.ReadWriteMany) || slices.Contains(pvc.Spec.AccessModes, v1.ReadOnlyMany) {
			say("it is ReadWriteMany or ReadOnlyMany")
			continue
		}
		if b := backend[v.Spec.Pool]; !volume.Movable(b) {
			say(fmt.Sprintf("it is in pool %s (%s): plinth moves volumes of file, btrfs and disk pools only", v.Spec.Pool, dash(b)))
			continue
		}
		selectors, err := c.podSelectors(ctx, ns, claim)
		if err != nil {
			return nil, nil, err
		}
		best, bestRoom := -1, int64(-1)
		var whyNot []string
		for ci, cand := range cands {
			if !matches(cand.labels, selectors) {
				whyNot = append(whyNot, cand.name+": its pods' nodeSelector excludes it")
				continue
			}
			if why := move.Fits(cand.pools, backend[v.Spec.Pool], v.Spec.Mode, v.Spec.FsType, v.Spec.CapacityBytes); why != "" {
				whyNot = append(whyNot, cand.name+": "+why)
				continue
			}
			if room := largestRoom(cand.pools, backend[v.Spec.Pool]); room > bestRoom {
				best, bestRoom = ci, room
			}
		}
		if best < 0 {
			if len(whyNot) == 0 {
				whyNot = []string{"no other schedulable node runs plinth with a transfer service"}
			}
			say("no node takes it: " + strings.Join(whyNot, "; "))
			continue
		}
		take(cands[best].pools, backend[v.Spec.Pool], v.Spec.CapacityBytes)
		plan = append(plan, planned{ns: ns, claim: claim, to: cands[best].name})
	}
	return plan, cannot, nil
}

// candidates are the other schedulable, ready nodes whose plinth serves
// transfers.
func (c *Client) candidates(ctx context.Context, node string) ([]candidate, error) {
	pnodes, err := c.Plinth.PlinthV1alpha1().PlinthNodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []candidate
	for _, pn := range pnodes.Items {
		if pn.Name == node || pn.Status.Transfer == nil {
			continue
		}
		n, err := c.Core.CoreV1().Nodes().Get(ctx, pn.Name, metav1.GetOptions{})
		if err != nil || n.Spec.Unschedulable || !move.NodeReady(n) {
			continue
		}
		out = append(out, candidate{name: pn.Name, pools: slices.Clone(pn.Status.Pools), labels: n.Labels})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// podSelectors are the nodeSelectors of the pods that use a claim.
func (c *Client) podSelectors(ctx context.Context, ns, claim string) ([]map[string]string, error) {
	pods, err := c.Core.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []map[string]string
	for _, p := range pods.Items {
		for _, vol := range p.Spec.Volumes {
			if vol.PersistentVolumeClaim != nil && vol.PersistentVolumeClaim.ClaimName == claim && len(p.Spec.NodeSelector) > 0 {
				out = append(out, p.Spec.NodeSelector)
			}
		}
	}
	return out, nil
}

func matches(nodeLabels map[string]string, selectors []map[string]string) bool {
	for _, s := range selectors {
		if !labels.SelectorFromSet(s).Matches(labels.Set(nodeLabels)) {
			return false
		}
	}
	return true
}

// largestRoom is the most a pool of pools that takes volumes of a pool of
// backend can take.
func largestRoom(pools []v1alpha1.PoolStatus, backend string) int64 {
	var best int64
	for _, p := range pools {
		if volume.TransferableTo(backend, p.Backend) && p.Healthy {
			best = max(best, p.AllocatableBytes)
		}
	}
	return best
}

// take counts n bytes as gone from the roomiest pool of pools that takes
// volumes of a pool of backend.
func take(pools []v1alpha1.PoolStatus, backend string, n int64) {
	best := -1
	for i, p := range pools {
		if volume.TransferableTo(backend, p.Backend) && p.Healthy && p.AllocatableBytes >= n && (best < 0 || p.AllocatableBytes > pools[best].AllocatableBytes) {
			best = i
		}
	}
	if best >= 0 {
		pools[best].AllocatableBytes -= n
	}
}

// evictRest evicts the node's pods that are left, but DaemonSets' and
// static pods, through the eviction API (PodDisruptionBudgets hold: a
// blocked eviction is tried again until the drain's deadline).
func (c *Client) evictRest(ctx context.Context, node string, rep *DrainReport, progress func(string)) error {
	for {
		pods, err := c.Core.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			return err
		}
		var left, blocked []string
		rep.NotEvicted = nil
		for _, p := range pods.Items {
			name := p.Namespace + "/" + p.Name
			if p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
				continue
			}
			if stays(&p) {
				rep.NotEvicted = append(rep.NotEvicted, name+" (DaemonSet or static pod)")
				continue
			}
			if p.DeletionTimestamp != nil {
				left = append(left, name)
				continue
			}
			err := c.Core.CoreV1().Pods(p.Namespace).EvictV1(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace}})
			switch {
			case err == nil:
				if !slices.Contains(rep.Evicted, name) {
					rep.Evicted = append(rep.Evicted, name)
					progress("evicted " + name)
				}
				left = append(left, name)
			case apierrors.IsNotFound(err):
			case apierrors.IsTooManyRequests(err):
				blocked = append(blocked, name)
				left = append(left, name)
			default:
				return fmt.Errorf("evict %s: %w", name, err)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain of %s: pods not gone: %s (PodDisruptionBudget blocks %s): %w", node, strings.Join(left, ", "), strings.Join(blocked, ", "), errors.Join(ctx.Err()))
		case <-time.After(2 * time.Second):
		}
	}
}

// stays reports whether a drain leaves p: a DaemonSet's pod or a static
// (mirror) pod.
func stays(p *v1.Pod) bool {
	if _, ok := p.Annotations[v1.MirrorPodAnnotationKey]; ok {
		return true
	}
	for _, o := range p.OwnerReferences {
		if o.Kind == "DaemonSet" {
			return true
		}
	}
	return false
}
