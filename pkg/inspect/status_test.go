package inspect

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	plinthfake "github.com/plinth-dev/plinth/pkg/generated/clientset/versioned/fake"
)

// An installation in the fake API server: two controller replicas, n1
// leading, and a node agent on each of n1..n3, all at v0.2.0 and healthy,
// unless a case changes them.
type installation struct {
	now         time.Time
	lease       *coordinationv1.Lease
	pods        []*corev1.Pod
	nodes       []*corev1.Node
	plinthNodes []*v1alpha1.PlinthNode
	volumes     []*v1alpha1.PlinthVolume
}

const image = "ghcr.io/plinth-dev/plinth:"

func plinthPod(name, component, node, version string, ready bool) *corev1.Pod {
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "plinth-system",
			Labels: map[string]string{"app.kubernetes.io/name": "plinth", "app.kubernetes.io/component": component}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{
			{Name: "csi-node-driver-registrar", Image: "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.13.0"},
			{Name: component, Image: image + version}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}},
	}
}

func healthyInstallation() *installation {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	holder, duration := "plinth-controller-7d9f-abcde_5f3a9c2e1b4d", int32(15)
	in := &installation{
		now: now,
		lease: &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "plinth-controller-plinth-example-com", Namespace: "plinth-system"},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &duration, RenewTime: &metav1.MicroTime{Time: now.Add(-3 * time.Second)}}},
		pods: []*corev1.Pod{
			plinthPod("plinth-controller-7d9f-abcde", "controller", "n1", "v0.2.0", true),
			plinthPod("plinth-controller-7d9f-fghij", "controller", "n2", "v0.2.0", true),
		},
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		in.pods = append(in.pods, plinthPod("plinth-node-"+n, "node", n, "v0.2.0", true))
		in.nodes = append(in.nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
		in.plinthNodes = append(in.plinthNodes, &v1alpha1.PlinthNode{ObjectMeta: metav1.ObjectMeta{Name: n}, Status: v1alpha1.NodeStatus{
			Version: "v0.2.0", HeartbeatTime: metav1.Time{Time: now.Add(-10 * time.Second)},
			Pools:   []v1alpha1.PoolStatus{{Name: "fast", Backend: "file", Healthy: true}},
			Devices: []v1alpha1.DeviceStatus{{Resource: "example.com/gpu", ID: "gpu0", Healthy: true}},
		}})
		in.volumes = append(in.volumes, &v1alpha1.PlinthVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-" + n},
			Spec:   v1alpha1.VolumeSpec{NodeName: n, Pool: "fast", CapacityBytes: 1 << 30, Mode: v1alpha1.ModeFilesystem},
			Status: v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: 1 << 30}})
	}
	return in
}

func (in *installation) client() *Client {
	var core, plinth []runtime.Object
	if in.lease != nil {
		core = append(core, in.lease)
	}
	for _, p := range in.pods {
		core = append(core, p)
	}
	for _, n := range in.nodes {
		core = append(core, n)
	}
	for _, n := range in.plinthNodes {
		plinth = append(plinth, n)
	}
	for _, v := range in.volumes {
		plinth = append(plinth, v)
	}
	return &Client{Core: fake.NewSimpleClientset(core...), Plinth: plinthfake.NewSimpleClientset(plinth...), Driver: "plinth.example.com",
		Now: func() time.Time { return in.now }}
}

func (in *installation) plinthNode(name string) *v1alpha1.PlinthNode {
	for _, n := range in.plinthNodes {
		if n.Name == name {
			return n
		}
	}
	panic(name)
}

func TestStatus(t *testing.T) {
	for name, tc := range map[string]struct {
		change func(*installation)
		// want: the problems, each by a part of its text; mixed; the
		// states of n1..n3 (and more), in order.
		want       []string
		mixed      bool
		states     []string
		versions   []VersionReport
		printed    []string // lines of the table, each by a part
		leaderless bool
	}{
		"all healthy": {
			states:   []string{NodeReady, NodeReady, NodeReady},
			versions: []VersionReport{{Version: "v0.2.0", Controllers: []string{"plinth-controller-7d9f-abcde", "plinth-controller-7d9f-fghij"}, Nodes: []string{"n1", "n2", "n3"}}},
			printed:  []string{"leader plinth-controller-7d9f-abcde (Lease plinth-system/plinth-controller-plinth-example-com, renewed 3s ago)", "VERSION: v0.2.0 (controller x2, nodes n1, n2, n3)", "All well."},
		},
		"an upgrade half way": {
			change: func(in *installation) {
				// The Deployment rolled one replica; the DaemonSet n3 so far,
				// whose agent reports the new version.
				in.pods[1] = plinthPod("plinth-controller-8e0a-klmno", "controller", "n2", "v0.3.0", true)
				in.pods[4] = plinthPod("plinth-node-n3", "node", "n3", "v0.3.0", true)
				in.plinthNode("n3").Status.Version = "v0.3.0"
			},
			want:   []string{"mixed versions: v0.2.0 (controller x1, nodes n1, n2); v0.3.0 (controller x1, nodes n3)"},
			mixed:  true,
			states: []string{NodeReady, NodeReady, NodeReady},
			versions: []VersionReport{
				{Version: "v0.2.0", Controllers: []string{"plinth-controller-7d9f-abcde"}, Nodes: []string{"n1", "n2"}},
				{Version: "v0.3.0", Controllers: []string{"plinth-controller-8e0a-klmno"}, Nodes: []string{"n3"}},
			},
			printed: []string{"MIXED VERSIONS: v0.2.0 (controller x1, nodes n1, n2); v0.3.0 (controller x1, nodes n3)", "NEEDS ATTENTION (1):"},
		},
		"an agent restarted onto a new image before it reported": {
			change: func(in *installation) { in.pods[2] = plinthPod("plinth-node-n1", "node", "n1", "v0.3.0", false) },
			want: []string{"mixed versions: v0.2.0 (controller x2, nodes n1, n2, n3); pods' images: ghcr.io/plinth-dev/plinth:v0.2.0 (controller x2, nodes n2, n3); " +
				"ghcr.io/plinth-dev/plinth:v0.3.0 (nodes n1)"},
			mixed:  true,
			states: []string{NodeReady, NodeReady, NodeReady},
			versions: []VersionReport{
				{Version: "v0.2.0", Controllers: []string{"plinth-controller-7d9f-abcde", "plinth-controller-7d9f-fghij"}, Nodes: []string{"n1", "n2", "n3"}},
			},
		},
		"an unhealthy pool, a degraded one, a missing disk and a sick GPU": {
			change: func(in *installation) {
				st := &in.plinthNode("n2").Status
				st.Pools = append(st.Pools,
					v1alpha1.PoolStatus{Name: "disks", Backend: "disk", Healthy: false, Message: "disk wwn:5000c500a1b2c3d4 (was sdb) is missing"},
					v1alpha1.PoolStatus{Name: "mirror", Backend: "btrfs", Healthy: true, Message: "degraded: raid1 runs on one disk"})
				st.Disks = []v1alpha1.DiskStatus{{ID: "wwn:5000c500a1b2c3d4", Name: "sdb", State: "missing", Pool: "disks"}}
				st.Devices[0].Healthy = false
			},
			want: []string{
				"node n2: pool disks is unhealthy: disk wwn:5000c500a1b2c3d4 (was sdb) is missing",
				"node n2: pool mirror is degraded: raid1 runs on one disk",
				"node n2: disk wwn:5000c500a1b2c3d4 of pool disks (last seen as sdb) is missing",
				"node n2: example.com/gpu device gpu0 is unhealthy",
			},
			states:   []string{NodeReady, NodeReady, NodeReady},
			versions: []VersionReport{{Version: "v0.2.0", Controllers: []string{"plinth-controller-7d9f-abcde", "plinth-controller-7d9f-fghij"}, Nodes: []string{"n1", "n2", "n3"}}},
			printed:  []string{"pool disks unhealthy, pool mirror degraded, disk wwn:5000c500a1b2c3d4 missing, device example.com/gpu/gpu0 unhealthy", "NEEDS ATTENTION (4):"},
		},
		"a lost node, a silent agent, and an unreachable volume": {
			change: func(in *installation) {
				// n3's Node object is gone, its PlinthNode with it (owned by
				// the Node), its volume object stays; n2's agent stopped
				// reporting; a volume on n1 lost its disk.
				in.nodes = in.nodes[:2]
				in.plinthNodes = in.plinthNodes[:2]
				in.pods = in.pods[:4]
				in.plinthNode("n2").Status.HeartbeatTime = metav1.Time{Time: in.now.Add(-10 * time.Minute)}
				in.volumes[0].Status.Reason, in.volumes[0].Status.Message = v1alpha1.ReasonUnreachable, "disk wwn:1 of the volume is missing"
			},
			want: []string{
				"volume pv-n1 on node n1: disk wwn:1 of the volume is missing",
				"node n2: its agent has not reported for 2m0s (last heartbeat 10m0s ago)",
				"node n3 is LOST: its Node object has left the cluster; 1 volume object is out of reach",
			},
			states:   []string{NodeReady, NodeStale, NodeLost},
			versions: []VersionReport{{Version: "v0.2.0", Controllers: []string{"plinth-controller-7d9f-abcde", "plinth-controller-7d9f-fghij"}, Nodes: []string{"n1", "n2"}}},
			printed:  []string{"n3 ", "Lost"},
		},
		"no leader": {
			change:     func(in *installation) { in.lease.Spec.RenewTime.Time = in.now.Add(-time.Minute) },
			want:       []string{"controller: the leader plinth-controller-7d9f-abcde last renewed the Lease 1m0s ago, past its 15s"},
			states:     []string{NodeReady, NodeReady, NodeReady},
			versions:   []VersionReport{{Version: "v0.2.0", Controllers: []string{"plinth-controller-7d9f-abcde", "plinth-controller-7d9f-fghij"}, Nodes: []string{"n1", "n2", "n3"}}},
			printed:    []string{"leader <none>"},
			leaderless: true,
		},
	} {
		t.Run(name, func(t *testing.T) {
			in := healthyInstallation()
			if tc.change != nil {
				tc.change(in)
			}
			rep, err := in.client().Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Problems) != len(tc.want) {
				t.Errorf("problems:\n  %s\nwant %d", strings.Join(rep.Problems, "\n  "), len(tc.want))
			}
			for _, w := range tc.want {
				found := false
				for _, p := range rep.Problems {
					found = found || strings.Contains(p, w)
				}
				if !found {
					t.Errorf("no problem says %q:\n  %s", w, strings.Join(rep.Problems, "\n  "))
				}
			}
			if rep.Healthy() != (len(tc.want) == 0) {
				t.Errorf("Healthy() = %t with problems %q", rep.Healthy(), rep.Problems)
			}
			if rep.MixedVersions != tc.mixed {
				t.Errorf("mixed versions %t, want %t", rep.MixedVersions, tc.mixed)
			}
			var states []string
			for _, n := range rep.Nodes {
				states = append(states, n.State)
			}
			if diff := cmp.Diff(tc.states, states); diff != "" {
				t.Errorf("node states (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.versions, rep.Versions); diff != "" {
				t.Errorf("versions (-want +got):\n%s", diff)
			}
			if (rep.Controller.Leader == "") != tc.leaderless {
				t.Errorf("leader %q", rep.Controller.Leader)
			}
			var b bytes.Buffer
			if err := Print(&b, "table", rep); err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.printed {
				if !strings.Contains(b.String(), p) {
					t.Errorf("table lacks %q:\n%s", p, b.String())
				}
			}
			b.Reset()
			if err := Print(&b, "json", rep); err != nil || !strings.Contains(b.String(), `"mixedVersions": `+map[bool]string{true: "true", false: "false"}[tc.mixed]) {
				t.Errorf("json: %v\n%s", err, b.String())
			}
			t.Logf("kubectl plinth status:\n%s", func() string { var b bytes.Buffer; _ = Print(&b, "table", rep); return b.String() }())
		})
	}
}

func TestImageVersion(t *testing.T) {
	for ref, want := range map[string]string{
		"ghcr.io/plinth-dev/plinth:v0.1.0":                  "v0.1.0",
		"localhost:5000/plinth:dev":                         "dev",
		"localhost:5000/plinth":                             "latest",
		"plinth:v0.1.0@sha256:0123456789abcdef0123":         "v0.1.0",
		"localhost:5000/plinth@sha256:0123456789abcdef0123": "@0123456789ab",
	} {
		if got := imageVersion(ref); got != want {
			t.Errorf("imageVersion(%q) = %q, want %q", ref, got, want)
		}
	}
}
