package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/pkg/inspect"
)

// kubectlPlinth runs the plugin against the e2e cluster.
func kubectlPlinth(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(e.kubectlPlinth, append([]string{"--kubeconfig", e.c.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl plinth %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func kubectlPlinthJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := kubectlPlinth(t, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("kubectl plinth %v -o json: %v\n%s", args, err, out)
	}
}

// checkKubectlPlinth runs while scenario 3's btrfs pod holds its volume
// and scenario 5's pods hold 2 and 4 of the 8 GPUs (a third waits for 3).
func checkKubectlPlinth(t *testing.T, ctx context.Context) {
	t.Helper()
	var nodes []inspect.NodeReport
	kubectlPlinthJSON(t, &nodes, "nodes")
	if len(nodes) != 1 || nodes[0].Name != nodeName || len(nodes[0].Pools) != 7 || len(nodes[0].Resources) != 1 {
		t.Fatalf("kubectl plinth nodes: %+v", nodes)
	}
	if r := nodes[0].Resources[0]; r.Resource != "example.com/gpu" || r.Devices != 8 || r.Healthy != 8 || r.Allocated != 6 {
		t.Errorf("kubectl plinth nodes, GPUs: %+v; want 8 devices, 8 healthy, 6 allocated", r)
	}
	var vols []inspect.VolumeReport
	kubectlPlinthJSON(t, &vols, "volumes")
	found := false
	for _, v := range vols {
		if v.Claim == "s3/sub" {
			found = true
			if v.Node != nodeName || v.Pool != "btr" || v.Phase != "Ready" || len(v.Pods) != 1 || v.Pods[0] != "s3/btr" || v.CapacityBytes != 128<<20 {
				t.Errorf("kubectl plinth volumes, s3/sub: %+v", v)
			}
		}
	}
	if !found {
		t.Errorf("kubectl plinth volumes lacks s3/sub: %+v", vols)
	}
	var devs []inspect.DeviceReport
	kubectlPlinthJSON(t, &devs, "devices")
	if len(devs) != 1 || devs[0].Free != 2 || len(devs[0].Holders) != 2 {
		t.Errorf("kubectl plinth devices: %+v; want 2 free, held by s5/two and s5/four", devs)
	}
	why := kubectlPlinth(t, "why", "pod", "-n", "s5", "three")
	if !strings.Contains(why, "asks 3") || !strings.Contains(why, "2 free") {
		t.Errorf("kubectl plinth why pod three:\n%s", why)
	}
	table := kubectlPlinth(t, "nodes")
	logf("kubectl plinth nodes:\n%s", table)
	logf("kubectl plinth devices:\n%s", kubectlPlinth(t, "devices"))
	logf("kubectl plinth why pod s5/three:\n%s", why)
}
