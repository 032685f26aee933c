package inspect

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
)

func TestRequestedCountsLikeTheScheduler(t *testing.T) {
	gpu := corev1.ResourceName("example.com/gpu")
	lim := func(n int64) corev1.ResourceRequirements {
		return corev1.ResourceRequirements{Limits: corev1.ResourceList{gpu: *resource.NewQuantity(n, resource.DecimalSI)}}
	}
	p := corev1.Pod{Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Resources: lim(3)}},
		Containers:     []corev1.Container{{Resources: lim(1)}, {Resources: lim(1)}},
	}}
	if got := requested(p, gpu); got != 3 {
		t.Errorf("init 3, containers 1+1: %d, want 3", got)
	}
	p.Spec.InitContainers = nil
	if got := requested(p, gpu); got != 2 {
		t.Errorf("containers 1+1: %d, want 2", got)
	}
}

// The volumes table shows USED next to CAPACITY: what the node published,
// or "-" where it published nothing; json and yaml carry usedBytes.
func TestPrint(t *testing.T) {
	var b bytes.Buffer
	used := int64(300 << 20)
	at := metav1.NewTime(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	vols := []VolumeReport{
		{ID: "pv-1", Claim: "ns/c", Node: "n1", Pool: "fast", Mode: "Block", CapacityBytes: 1 << 30, Phase: "Ready"},
		{ID: "pv-2", Claim: "ns/d", Node: "n1", Pool: "fast", Mode: "Filesystem", CapacityBytes: 1 << 30, UsedBytes: &used, UsageTime: &at, Phase: "Ready"},
	}
	if err := Print(&b, "table", vols); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "VOLUME") || !strings.Contains(lines[1], "1Gi") || !strings.Contains(lines[1], "<none>") {
		t.Fatalf("table:\n%s", b.String())
	}
	col := func(line, header string) string {
		i := strings.Index(lines[0], header)
		return strings.Fields(line[i:])[0]
	}
	if c, u := strings.Index(lines[0], "CAPACITY"), strings.Index(lines[0], "USED"); c < 0 || u < c {
		t.Fatalf("no USED after CAPACITY:\n%s", b.String())
	}
	if got := col(lines[1], "USED"); got != "-" {
		t.Errorf("pv-1 USED %q, want -", got)
	}
	if got := col(lines[2], "USED"); got != "300MiB" {
		t.Errorf("pv-2 USED %q, want 300MiB", got)
	}
	b.Reset()
	if err := Print(&b, "yaml", vols); err != nil || !strings.Contains(b.String(), "capacityBytes: 1073741824") ||
		strings.Count(b.String(), "usedBytes: 314572800") != 1 || !strings.Contains(b.String(), `usageTime: "2025-06-01T12:00:00Z"`) {
		t.Fatalf("yaml: %v\n%s", err, b.String())
	}
	b.Reset()
	if err := Print(&b, "json", vols); err != nil || strings.Count(b.String(), `"usedBytes": 314572800`) != 1 {
		t.Fatalf("json: %v\n%s", err, b.String())
	}
	if err := Print(&b, "xml", vols); err == nil {
		t.Fatal("xml accepted")
	}
}

func TestPrintDisks(t *testing.T) {
	var b bytes.Buffer
	disks := []DiskReport{
		{Node: "n1", DiskStatus: v1alpha1.DiskStatus{ID: "wwn:5000c500a1b2c3d4", Name: "sdb", SizeBytes: 4 << 40, Transport: "sata", NUMANode: -1, State: "plinth", Pool: "bulk"}},
		{Node: "n1", DiskStatus: v1alpha1.DiskStatus{ID: "serial:S5GX", Name: "nvme0n1", SizeBytes: 1 << 40, Transport: "nvme", NUMANode: 1, State: "foreign", Reason: "has partition table gpt"}},
	}
	if err := Print(&b, "table", disks); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NODE") || !strings.Contains(lines[1], "4Ti") || !strings.Contains(lines[1], "bulk") ||
		!strings.Contains(lines[2], "has partition table gpt") {
		t.Fatalf("table:\n%s", b.String())
	}
	b.Reset()
	if err := Print(&b, "json", disks); err != nil || !strings.Contains(b.String(), `"node": "n1"`) || !strings.Contains(b.String(), `"transport": "nvme"`) {
		t.Fatalf("json: %v\n%s", err, b.String())
	}
}

// A volume whose node's Node object has left the cluster is shown on a
// LOST node by `kubectl plinth volumes`, and `kubectl plinth nodes` names
// that node (its PlinthNode went with the Node) by its volume objects.
func TestLostNode(t *testing.T) {
	vol := func(name, node string) *v1alpha1.PlinthVolume {
		return &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelNode: node}},
			Spec:   v1alpha1.VolumeSpec{NodeName: node, Pool: "fast", CapacityBytes: 1 << 30, Mode: v1alpha1.ModeBlock, Claim: "ns/" + name},
			Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 1 << 30}}
	}
	c := &Client{
		Core: fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}),
		Plinth: plinthfake.NewSimpleClientset(
			&v1alpha1.PlinthNode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: v1alpha1.NodeStatus{Pools: []v1alpha1.PoolStatus{{Name: "fast", Healthy: true}}}},
			vol("pv-1", "n1"), vol("pv-2", "n2"), vol("pv-3", "n2")),
		Driver: "plinth.example.com",
	}
	ctx := context.Background()
	vols, err := c.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Print(&b, "table", vols); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 || strings.Contains(lines[1], "LOST") || !strings.Contains(lines[2], "n2 (LOST)") || !strings.Contains(lines[3], "n2 (LOST)") {
		t.Fatalf("volumes:\n%s", b.String())
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[0].NodeGone || !nodes[1].NodeGone || nodes[1].Name != "n2" || nodes[1].VolumeObjects != 2 {
		t.Fatalf("nodes %+v", nodes)
	}
	b.Reset()
	if err := Print(&b, "table", nodes); err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || strings.Contains(lines[1], "LOST") || !strings.HasPrefix(lines[2], "n2 (LOST)") || !strings.Contains(lines[2], " 2 ") {
		t.Fatalf("nodes:\n%s", b.String())
	}
	b.Reset()
	if err := Print(&b, "json", vols); err != nil || strings.Count(b.String(), `"nodeLost": true`) != 2 {
		t.Fatalf("json: %v\n%s", err, b.String())
	}
}

// Volumes reports the used bytes a node published in the volume's status.
func TestVolumesUsed(t *testing.T) {
	used := int64(42 << 20)
	at := metav1.NewTime(time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC))
	c := &Client{
		Core: fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}),
		Plinth: plinthfake.NewSimpleClientset(
			&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-1"}, Spec: v1alpha1.VolumeSpec{NodeName: "n1", CapacityBytes: 1 << 30},
				Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 1 << 30, UsedBytes: &used, UsageTime: &at}},
			&v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-2"}, Spec: v1alpha1.VolumeSpec{NodeName: "n1", CapacityBytes: 1 << 30}}),
	}
	vols, err := c.Volumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 2 || vols[0].UsedBytes == nil || *vols[0].UsedBytes != used || !vols[0].UsageTime.Equal(&at) || vols[1].UsedBytes != nil {
		t.Fatalf("volumes %+v", vols)
	}
}
