package inspect

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
)

// Labels of plinth's pods (deploy/base and the chart), and the containers
// that run plinth in them (the rest are sidecars).
const (
	labelName      = "app.kubernetes.io/name"
	labelComponent = "app.kubernetes.io/component"
	// ComponentController and ComponentNode are the components' label
	// values and the names of their plinth containers.
	ComponentController = "controller"
	ComponentNode       = "node"
)

// DefaultStaleAfter is how old a node's heartbeat may be before status
// calls the node agent not reporting: four of its 30 s heartbeats.
const DefaultStaleAfter = 2 * time.Minute

// Node states in a StatusReport.
const (
	NodeReady = "Ready"
	// NodeStale: the node agent's heartbeat is older than StaleAfter (the
	// agent is down, or cannot reach the API server).
	NodeStale = "NotReporting"
	// NodeLost: the Node object has left the cluster (as the controller
	// counts lost nodes: pkg/provision/lostnodes.go).
	NodeLost = "Lost"
	// NodeNoStatus: a plinth node pod runs there, but the node has
	// published no PlinthNode yet.
	NodeNoStatus = "NoStatus"
)

// StatusReport is `kubectl plinth status`: the whole installation.
type StatusReport struct {
	Controller ControllerReport `json:"controller"`
	Nodes      []NodeSummary    `json:"nodes"`
	// Versions are the versions running, each with who runs it.
	Versions []VersionReport `json:"versions"`
	// MixedVersions: more than one version runs (an upgrade in progress,
	// or one that stopped half way).
	MixedVersions bool `json:"mixedVersions"`
	// Images are the images plinth's pods run, each with its pods.
	Images  []ImageReport `json:"images"`
	Volumes int           `json:"volumes"`
	// Problems are what needs attention; none means all is well.
	Problems []string `json:"problems"`
}

// Healthy reports whether nothing needs attention.
func (s StatusReport) Healthy() bool { return len(s.Problems) == 0 }

// ControllerReport is the controller: its replicas and which one leads.
type ControllerReport struct {
	// Lease is namespace/name of the leader-election Lease.
	Lease string `json:"lease,omitempty"`
	// Leader is the pod holding the Lease, "" when none does.
	Leader string `json:"leader,omitempty"`
	// Renewed is how long ago the leader last renewed the Lease.
	Renewed  string       `json:"renewed,omitempty"`
	Replicas []PodSummary `json:"replicas"`
}

// PodSummary is one of plinth's pods.
type PodSummary struct {
	Name    string `json:"name"`
	Node    string `json:"node"`
	Image   string `json:"image"`
	Version string `json:"version"`
	Ready   bool   `json:"ready"`
}

// NodeSummary is one node agent in a StatusReport.
type NodeSummary struct {
	Name string `json:"name"`
	// Version is what the agent says of itself (PlinthNode status).
	Version   string `json:"version"`
	Heartbeat string `json:"heartbeat"`
	State     string `json:"state"`
	Pools     int    `json:"pools"`
	// UnhealthyPools cannot be read; DegradedPools run with less
	// redundancy (pool/message).
	UnhealthyPools   []string `json:"unhealthyPools,omitempty"`
	DegradedPools    []string `json:"degradedPools,omitempty"`
	MissingDisks     []string `json:"missingDisks,omitempty"`
	Devices          int      `json:"devices"`
	UnhealthyDevices []string `json:"unhealthyDevices,omitempty"`
	Volumes          int      `json:"volumes"`
}

// VersionReport is one version and who runs it.
type VersionReport struct {
	Version     string   `json:"version"`
	Controllers []string `json:"controllers,omitempty"`
	Nodes       []string `json:"nodes,omitempty"`
}

// ImageReport is one image of plinth's pods and the pods running it.
type ImageReport struct {
	Image       string   `json:"image"`
	Controllers []string `json:"controllers,omitempty"`
	// Nodes are the nodes whose plinth node pod runs the image.
	Nodes []string `json:"nodes,omitempty"`
}

// Status summarises the installation: the controller's replicas and
// leader, every node agent's version and health, mixed versions, and
// the problems that need attention.
func (c *Client) Status(ctx context.Context) (StatusReport, error) {
	now := time.Now()
	if c.Now != nil {
		now = c.Now()
	}
	staleAfter := c.StaleAfter
	if staleAfter <= 0 {
		staleAfter = DefaultStaleAfter
	}
	var rep StatusReport
	problem := func(f string, a ...any) { rep.Problems = append(rep.Problems, fmt.Sprintf(f, a...)) }

	// The controller: its Lease first, whose namespace is the
	// installation's.
	leaseName := "plinth-controller-" + strings.ReplaceAll(c.Driver, ".", "-")
	leases, err := c.Core.CoordinationV1().Leases("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return rep, fmt.Errorf("list leases: %w", err)
	}
	namespace := ""
	for _, l := range leases.Items {
		if l.Name != leaseName {
			continue
		}
		namespace, rep.Controller.Lease = l.Namespace, l.Namespace+"/"+l.Name
		holder := ""
		if l.Spec.HolderIdentity != nil {
			holder = *l.Spec.HolderIdentity
		}
		var renewed time.Time
		if l.Spec.RenewTime != nil {
			renewed = l.Spec.RenewTime.Time
			rep.Controller.Renewed = now.Sub(renewed).Round(time.Second).String() + " ago"
		}
		duration := 15 * time.Second
		if l.Spec.LeaseDurationSeconds != nil {
			duration = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
		}
		switch {
		case holder == "":
			problem("controller: no replica holds the Lease %s (none leads: nothing is provisioned)", rep.Controller.Lease)
		case now.Sub(renewed) > duration:
			problem("controller: the leader %s last renewed the Lease %s ago, past its %s (it is stuck or gone)", leaderPod(holder),
				now.Sub(renewed).Round(time.Second), duration)
		default:
			rep.Controller.Leader = leaderPod(holder)
		}
		break
	}
	if rep.Controller.Lease == "" {
		problem("controller: no Lease %s in any namespace (no controller has ever led, or --driver-name is not the installation's)", leaseName)
	}
	podsOf := func(component string) ([]corev1.Pod, error) {
		sel := labels.Set{labelName: "plinth", labelComponent: component}.String()
		l, err := c.Core.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return nil, fmt.Errorf("list %s pods: %w", component, err)
		}
		var out []corev1.Pod
		for _, p := range l.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				out = append(out, p)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return out, nil
	}
	controllers, err := podsOf(ComponentController)
	if err != nil {
		return rep, err
	}
	nodePods, err := podsOf(ComponentNode)
	if err != nil {
		return rep, err
	}
	images := map[string]*ImageReport{} // plinth's images, of every pod
	image := func(ref string) *ImageReport {
		if images[ref] == nil {
			images[ref] = &ImageReport{Image: ref}
		}
		return images[ref]
	}
	ready := 0
	versions := map[string]*VersionReport{}
	version := func(v string) *VersionReport {
		if versions[v] == nil {
			versions[v] = &VersionReport{Version: v}
		}
		return versions[v]
	}
	for _, p := range controllers {
		s := podSummary(p, ComponentController)
		rep.Controller.Replicas = append(rep.Controller.Replicas, s)
		image(s.Image).Controllers = append(image(s.Image).Controllers, s.Name)
		if s.Ready {
			ready++
		}
		version(s.Version).Controllers = append(version(s.Version).Controllers, s.Name)
	}
	switch {
	case len(controllers) == 0:
		problem("controller: no pod (labels %s=plinth, %s=%s)", labelName, labelComponent, ComponentController)
	case ready == 0:
		problem("controller: none of its %d pods is ready", len(controllers))
	}
	agentOn := map[string]bool{}
	for _, p := range nodePods {
		im := image(podSummary(p, ComponentNode).Image)
		im.Nodes = append(im.Nodes, p.Spec.NodeName)
		agentOn[p.Spec.NodeName] = true
	}

	// The node agents, as they report themselves.
	pns, err := c.plinthNodes(ctx)
	if err != nil {
		return rep, err
	}
	vols, err := c.plinthVolumes(ctx)
	if err != nil {
		return rep, err
	}
	rep.Volumes = len(vols)
	held := map[string]int{}
	for _, v := range vols {
		held[v.Spec.NodeName]++
		if v.Status.Phase == v1alpha1.VolumeReady && v.Status.Message != "" && v.DeletionTimestamp == nil {
			problem("volume %s on node %s: %s", v.Name, v.Spec.NodeName, v.Status.Message)
		}
	}
	lost := c.nodeLookup()
	lostProblem := func(name string) {
		problem("node %s is LOST: its Node object has left the cluster; %s out of reach", name, volumeObjects(held[name]))
	}
	agentVersions := map[string]bool{}
	reported := map[string]bool{}
	for _, pn := range pns {
		reported[pn.Name] = true
		st := pn.Status
		n := NodeSummary{Name: pn.Name, Version: orDash(st.Version), Heartbeat: c.age(st.HeartbeatTime), State: NodeReady,
			Pools: len(st.Pools), Devices: len(st.Devices), Volumes: held[pn.Name]}
		switch {
		case lost.gone(ctx, pn.Name):
			n.State = NodeLost
			lostProblem(pn.Name)
		case st.HeartbeatTime.IsZero() || now.Sub(st.HeartbeatTime.Time) > staleAfter:
			n.State = NodeStale
			problem("node %s: its agent has not reported for %s (last heartbeat %s)", pn.Name, staleAfter, n.Heartbeat)
		}
		if n.State != NodeLost {
			agentVersions[n.Version] = true
			version(n.Version).Nodes = append(version(n.Version).Nodes, pn.Name)
		}
		for _, p := range st.Pools {
			switch {
			case !p.Healthy:
				n.UnhealthyPools = append(n.UnhealthyPools, p.Name)
				problem("node %s: pool %s is unhealthy: %s", pn.Name, p.Name, p.Message)
			case strings.HasPrefix(p.Message, "degraded"):
				n.DegradedPools = append(n.DegradedPools, p.Name)
				problem("node %s: pool %s is %s", pn.Name, p.Name, p.Message)
			}
		}
		for _, d := range st.Disks {
			if d.State == "missing" {
				n.MissingDisks = append(n.MissingDisks, d.ID)
				problem("node %s: disk %s of pool %s (last seen as %s) is missing", pn.Name, d.ID, orDash(d.Pool), d.Name)
			}
		}
		for _, d := range st.Devices {
			if !d.Healthy {
				n.UnhealthyDevices = append(n.UnhealthyDevices, d.Resource+"/"+d.ID)
				problem("node %s: %s device %s is unhealthy", pn.Name, d.Resource, d.ID)
			}
		}
		rep.Nodes = append(rep.Nodes, n)
	}
	// A node that left takes its PlinthNode with it, not its volumes; a
	// node whose agent runs but never reported has a pod and nothing else.
	for name, count := range held {
		if name != "" && !reported[name] {
			state := NodeNoStatus
			if lost.gone(ctx, name) {
				state = NodeLost
				lostProblem(name)
			} else {
				problem("node %s holds %s but has no PlinthNode status (its agent never reported)", name, volumeObjects(count))
			}
			rep.Nodes = append(rep.Nodes, NodeSummary{Name: name, Version: "-", Heartbeat: "-", State: state, Volumes: count})
			reported[name] = true
		}
	}
	for name := range agentOn {
		if name != "" && !reported[name] {
			problem("node %s: plinth's node pod runs there, but the node has published no status", name)
			rep.Nodes = append(rep.Nodes, NodeSummary{Name: name, Version: "-", Heartbeat: "-", State: NodeNoStatus})
		}
	}
	sort.Slice(rep.Nodes, func(i, j int) bool { return rep.Nodes[i].Name < rep.Nodes[j].Name })

	for _, v := range versions {
		rep.Versions = append(rep.Versions, *v)
	}
	sort.Slice(rep.Versions, func(i, j int) bool { return rep.Versions[i].Version < rep.Versions[j].Version })
	// Mixed: the node agents say different versions, or plinth's pods run
	// different images (the DaemonSet or the Deployment mid-rollout).
	// Controller tags and agents' versions are not compared with each
	// other: a development image's tag (dev) is not its binary's version.
	for _, im := range images {
		rep.Images = append(rep.Images, *im)
	}
	sort.Slice(rep.Images, func(i, j int) bool { return rep.Images[i].Image < rep.Images[j].Image })
	if len(agentVersions) > 1 || len(images) > 1 {
		rep.MixedVersions = true
		msg := "mixed versions: " + rep.versionLine()
		if len(images) > 1 {
			msg += "; pods' images: " + rep.imageLine()
		}
		problem("%s (an upgrade in progress, or one that stopped half way)", msg)
	}
	return rep, nil
}

// versionLine lists the versions and who runs each.
func (s StatusReport) versionLine() string {
	var parts []string
	for _, v := range s.Versions {
		parts = append(parts, v.Version+" ("+who(v.Controllers, v.Nodes)+")")
	}
	return strings.Join(parts, "; ")
}

// imageLine lists plinth's images and the pods that run each.
func (s StatusReport) imageLine() string {
	var parts []string
	for _, im := range s.Images {
		parts = append(parts, im.Image+" ("+who(im.Controllers, im.Nodes)+")")
	}
	return strings.Join(parts, "; ")
}

func volumeObjects(n int) string {
	if n == 1 {
		return "1 volume object is"
	}
	return fmt.Sprintf("%d volume objects are", n)
}

// who says who runs a version or an image: "controller x2, nodes n1, n2".
func who(controllers, nodes []string) string {
	var parts []string
	if n := len(controllers); n > 0 {
		parts = append(parts, fmt.Sprintf("controller x%d", n))
	}
	if len(nodes) > 0 {
		parts = append(parts, "nodes "+strings.Join(nodes, ", "))
	}
	return strings.Join(parts, ", ")
}

// podSummary is pod p, whose container named container runs plinth.
func podSummary(p corev1.Pod, container string) PodSummary {
	s := PodSummary{Name: p.Name, Node: p.Spec.NodeName}
	for _, ct := range p.Spec.Containers {
		if ct.Name == container {
			s.Image = ct.Image
		}
	}
	if s.Image == "" && len(p.Spec.Containers) > 0 {
		s.Image = p.Spec.Containers[0].Image
	}
	s.Version = imageVersion(s.Image)
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			s.Ready = cond.Status == corev1.ConditionTrue
		}
	}
	return s
}

// imageVersion is an image reference's tag (plinth's images are tagged
// with the version stamped into the binary), or its digest shortened, or
// latest.
func imageVersion(ref string) string {
	name, digest, _ := strings.Cut(ref, "@")
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		return name[i+1:]
	}
	if digest != "" {
		if _, hex, ok := strings.Cut(digest, ":"); ok && len(hex) > 12 {
			return "@" + hex[:12]
		}
		return "@" + digest
	}
	return "latest"
}

// leaderPod is the pod of a Lease holder's identity (pod name, "_", a
// random part: pkg/app's leaderIdentity).
func leaderPod(holder string) string {
	if i := strings.LastIndex(holder, "_"); i > 0 {
		return holder[:i]
	}
	return holder
}
