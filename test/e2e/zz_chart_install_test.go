package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
)

// TestZChartInstall runs last: it replaces the kustomize install with the
// Helm chart's (charts/plinth with ci/e2e-values.yaml, as `helm template`
// rendered it), then checks that the chart's plinth registers with the
// kubelet anew, adopts the volumes the first install made (scenario 3's
// btrfs volume, still in use), and provisions, mounts and removes a new one.
func TestZChartInstall(t *testing.T) {
	need(t)
	dir := chartRenders(t)
	render, err := os.ReadFile(filepath.Join(dir, "e2e.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer timed(t, "chart install (replaces the kustomize install)")()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	// The chart's workloads select on its release label too, and selectors
	// are immutable: remove the kustomize ones first (the pools stay).
	removeWorkloads(t, ctx)
	if regs := registrations(t, ctx); len(regs) != 0 {
		t.Fatalf("plinth node still answers on its metrics port after removal: %v", regs)
	}
	start := time.Now()
	if err := apply(ctx, e.cfg, render); err != nil {
		t.Fatal(err)
	}
	// A new process: its registration counters start at zero.
	waitRegistered(t, ctx)
	if err := e.waitPlinth(ctx); err != nil {
		t.Fatal(err)
	}
	logf("chart install: plinth registered with the kubelet %s after the chart was applied", time.Since(start).Round(time.Millisecond))

	// The first install's volume, in use by scenario 3's pod, is adopted.
	vols, err := e.plinthVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if v.Spec.Claim == "s3/sub" && v.Status.Phase != v1alpha1.VolumeReady {
			t.Errorf("scenario 3's volume after the reinstall: %s %s", v.Status.Phase, v.Status.Message)
		}
	}
	// A new volume through the chart's StorageClass, controller and node.
	ns := namespace(t, ctx, "chart")
	claimAndPod(t, ctx, ns, pvc("data", "plinth-local", "512Mi", false), appPod("writer", "data", false, "write", "/data/hello", "from-the-chart"))
	waitLog(t, ctx, ns, "writer", "content=from-the-chart", time.Minute)
	claim, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deletePod(t, ctx, ns, "writer")
	if err := e.client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitVolumeGone(t, ctx, claim.Spec.VolumeName)
	logf("chart install: kubectl plinth nodes:\n%s", kubectlPlinth(t, "nodes"))
}
