package inspect

import (
	"bytes"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
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

func TestPrint(t *testing.T) {
	var b bytes.Buffer
	vols := []VolumeReport{{ID: "pv-1", Claim: "ns/c", Node: "n1", Pool: "fast", Mode: "Block", CapacityBytes: 1 << 30, Phase: "Ready"}}
	if err := Print(&b, "table", vols); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "VOLUME") || !strings.Contains(lines[1], "1Gi") || !strings.Contains(lines[1], "<none>") {
		t.Fatalf("table:\n%s", b.String())
	}
	b.Reset()
	if err := Print(&b, "yaml", vols); err != nil || !strings.Contains(b.String(), "capacityBytes: 1073741824") {
		t.Fatalf("yaml: %v\n%s", err, b.String())
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
