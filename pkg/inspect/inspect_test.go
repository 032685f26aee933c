package inspect

import (
	"bytes"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
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
