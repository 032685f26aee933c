package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestChartRenders: every value set of charts/plinth, as `helm template`
// rendered it (test/chart/check.sh, run by make e2e), passes the Kubernetes
// 1.37 API server's validation (server-side apply, dry run): schemas,
// defaulting, admission.
func TestChartRenders(t *testing.T) {
	need(t)
	dir := chartRenders(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no renders in %s: %v", dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A namespace of its own: the dry run then creates the chart's
	// Deployment and DaemonSet rather than updating deploy/'s (whose
	// selectors differ by the release label and are immutable).
	ns := namespace(t, ctx, "plinth-chart-check")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("namespace: plinth-system"), []byte("namespace: "+ns))
		skipped := map[string]bool{}
		err = applyOpts(ctx, e.cfg, b, true, func(kind string) bool {
			// prometheus-operator's kinds are not served by this cluster.
			if kind == "ServiceMonitor" {
				skipped[kind] = true
				return true
			}
			return false
		})
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		logf("chart render %s: accepted by the API server (dry run); not served here: %v", filepath.Base(f), skipped)
	}
}

// TestChartAgreesWithKustomize: the chart's default render and deploy/base
// install the same thing where they must agree: the CRDs, the CSIDriver,
// the RBAC rules, the node agents' admission policy, the StorageClass, and
// the pods' privileges and host paths.
func TestChartAgreesWithKustomize(t *testing.T) {
	dir := chartRenders(t)
	chartYAML, err := os.ReadFile(filepath.Join(dir, "default.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	repo, _ := filepath.Abs("../..")
	baseYAML, err := render(filepath.Join(repo, "deploy/base"))
	if err != nil {
		t.Fatal(err)
	}
	index := func(b []byte) map[string]*unstructured.Unstructured {
		objs, err := decodeAll(b)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]*unstructured.Unstructured{}
		for _, o := range objs {
			m[o.GetKind()+"/"+o.GetName()] = o
		}
		return m
	}
	chart, base := index(chartYAML), index(baseYAML)
	fields := map[string][][]string{
		"CustomResourceDefinition/plinthvolumes.plinth.example.com": {{"spec"}},
		"CustomResourceDefinition/plinthnodes.plinth.example.com":   {{"spec"}},
		"CSIDriver/plinth.example.com":                              {{"spec"}},
		"ClusterRole/plinth-controller":                             {{"rules"}},
		"ClusterRole/plinth-node":                                   {{"rules"}},
		"Role/plinth-controller":                                    {{"rules"}},
		"ValidatingAdmissionPolicy/plinth-node":                     {{"spec"}},
		"ValidatingAdmissionPolicyBinding/plinth-node":              {{"spec"}},
		"StorageClass/plinth-local":                                 {{"provisioner"}, {"parameters"}, {"volumeBindingMode"}, {"allowVolumeExpansion"}, {"reclaimPolicy"}},
		"Deployment/plinth-controller": {{"spec", "replicas"}, {"spec", "template", "spec", "securityContext"},
			{"spec", "template", "spec", "serviceAccountName"}, {"spec", "template", "spec", "priorityClassName"}},
		"PodDisruptionBudget/plinth-controller": {{"spec", "minAvailable"}},
		"DaemonSet/plinth-node": {{"spec", "template", "spec", "volumes"}, {"spec", "template", "spec", "serviceAccountName"},
			{"spec", "template", "spec", "priorityClassName"}, {"spec", "template", "spec", "tolerations"}},
	}
	for key, paths := range fields {
		c, b := chart[key], base[key]
		if c == nil || b == nil {
			t.Errorf("%s: in chart %t, in deploy/base %t", key, c != nil, b != nil)
			continue
		}
		for _, p := range paths {
			cv, _, _ := unstructured.NestedFieldNoCopy(c.Object, p...)
			bv, _, _ := unstructured.NestedFieldNoCopy(b.Object, p...)
			if !reflect.DeepEqual(cv, bv) {
				t.Errorf("%s %v differs:\nchart: %v\nbase:  %v", key, p, cv, bv)
			}
		}
	}
	for _, key := range []string{"Deployment/plinth-controller", "DaemonSet/plinth-node"} {
		c, b := chart[key], base[key]
		if c == nil || b == nil {
			continue
		}
		cc, _, _ := unstructured.NestedSlice(c.Object, "spec", "template", "spec", "containers")
		bc, _, _ := unstructured.NestedSlice(b.Object, "spec", "template", "spec", "containers")
		if len(cc) != 1 || len(bc) != 1 {
			t.Fatalf("%s: %d and %d containers", key, len(cc), len(bc))
		}
		for _, f := range []string{"securityContext", "volumeMounts", "livenessProbe", "readinessProbe", "resources"} {
			if !reflect.DeepEqual(cc[0].(map[string]any)[f], bc[0].(map[string]any)[f]) {
				t.Errorf("%s container %s differs:\nchart: %v\nbase:  %v", key, f, cc[0].(map[string]any)[f], bc[0].(map[string]any)[f])
			}
		}
	}
}

// TestKustomizeOverlays: deploy/base and its storage-only, devices-only and DRA
// overlays render and pass the API server's validation (dry run).
func TestKustomizeOverlays(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "plinth-kustomize-check")
	for _, dir := range []string{"deploy/base", "deploy/overlays/storage", "deploy/overlays/devices", "deploy/overlays/dra"} {
		b, err := render(filepath.Join(e.repo, dir))
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		b = bytes.ReplaceAll(b, []byte("namespace: plinth-system"), []byte("namespace: "+ns))
		if err := applyOpts(ctx, e.cfg, b, true, nil); err != nil {
			t.Errorf("%s: %v", dir, err)
		}
	}
}

// chartRenders is the directory of the chart's renders (make e2e sets it),
// or skips the test.
func chartRenders(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PLINTH_CHART_RENDERS")
	if dir == "" {
		t.Skip("PLINTH_CHART_RENDERS is not set: make e2e renders the chart with helm (test/chart/check.sh) and sets it")
	}
	return dir
}
