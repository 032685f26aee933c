package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/test/e2e/cluster"
)

// killCase kills one plinth process (the source node's agent, the
// target node's, or the leading controller) when a move of a volume of a
// pool of backend ("file", "btrfs") reaches phase.
type killCase struct {
	role    string
	phase   v1alpha1.MovePhase
	backend string
}

// killVolume is the StorageClass parameters and the claim of a kill
// case's backend: its pool on the workers, the claim's size and the MiB
// of data it holds.
func killVolume(backend string) (params map[string]string, size string, mib int) {
	switch backend {
	case "btrfs":
		return map[string]string{"backend": "btrfs", "pool": "btr"}, "96Mi", 40
	}
	return map[string]string{"backend": "file"}, "96Mi", 60
}

// moveKillCases: a bounded set in make test; PLINTH_MOVE_KILLS=all
// (make move-kills) runs every role in every phase: twice for a file
// pool's volume, one way and back, and once for a btrfs subvolume.
func moveKillCases() []killCase {
	if os.Getenv("PLINTH_MOVE_KILLS") == "all" {
		var out []killCase
		for _, backend := range []string{"file", "file", "btrfs"} {
			for _, ph := range []v1alpha1.MovePhase{v1alpha1.MoveCopying, v1alpha1.MoveCutover, v1alpha1.MoveFinalSync, v1alpha1.MoveRebind} {
				for _, role := range []string{"source", "target", "controller"} {
					out = append(out, killCase{role, ph, backend})
				}
			}
		}
		return out
	}
	return []killCase{{"source", v1alpha1.MoveCopying, "file"}, {"target", v1alpha1.MoveFinalSync, "file"}, {"controller", v1alpha1.MoveRebind, "file"},
		{"target", v1alpha1.MoveFinalSync, "btrfs"}}
}

// Moves survive kill -9: for each case a StatefulSet's claim holding 60
// MiB of known data is moved (evicting its pod) between the workers, and
// the process of the case is killed (SIGKILL) as soon as the move is seen
// in the case's phase. Each move ends Done (the claim bound on the target)
// or Failed (rolled back: the claim still on its source), and either way
// the StatefulSet's pod runs again with the data as it was written.
func moveKills(t *testing.T, ctx context.Context, ws []*cluster.Worker) {
	cases := moveKillCases()
	// Two controller replicas, as the chart runs them: a killed leader's
	// moves go on in the standby once the Lease runs out. With one, they
	// waited for a new pod, which the workers' container runtime took
	// over three minutes to start after several kills (make move-kills,
	// case 32).
	scaleController(t, ctx, 2)
	defer scaleController(t, ctx, 1)
	hits, done, failed := 0, 0, 0
	for i, kc := range cases {
		src, dst := ws[i%2], ws[(i+1)%2]
		ns := namespace(t, ctx, fmt.Sprintf("kill-%d", i))
		class := "plinth-kill-" + kc.backend + "-" + src.Name
		params, size, mib := killVolume(kc.backend)
		storageClass(t, ctx, class, storagev1.VolumeBindingWaitForFirstConsumer, params, src.Name)
		ss := fillStatefulSet("k", class, src.Name, size, mib)
		if _, err := e.client.AppsV1().StatefulSets(ns).Create(ctx, ss, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPodRunning(t, ctx, ns, "k-0", 5*time.Minute)
		want := sumIn(t, waitLogIn(t, ctx, podLogs(src), ns, "k-0", "sum=", 2*time.Minute))
		mv := &v1alpha1.PlinthMove{ObjectMeta: metav1.ObjectMeta{Name: "data-k-0"}, Spec: v1alpha1.MoveSpec{Claim: "data-k-0", TargetNode: dst.Name, Evict: true}}
		if _, err := e.plinth.PlinthV1alpha1().PlinthMoves(ns).Create(ctx, mv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		killed := false
		var end *v1alpha1.PlinthMove
		if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 4*time.Minute, true, func(ctx context.Context) (bool, error) {
			m, err := e.plinth.PlinthV1alpha1().PlinthMoves(ns).Get(ctx, "data-k-0", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			if !killed && m.Status.Phase == kc.phase {
				killed = killRole(t, ctx, kc.role, src.Name, dst.Name)
			}
			end = m
			return m.Status.Phase == v1alpha1.MoveFailed || (m.Status.Phase == v1alpha1.MoveDone && m.Status.DoneTime != nil), nil
		}); err != nil {
			t.Fatalf("case %d (%s volume, %s killed in %s): the move did not end: %v; last %+v", i, kc.backend, kc.role, kc.phase, err, end.Status)
		}
		on := src.Name
		if end.Status.Phase == v1alpha1.MoveDone {
			on = dst.Name
			done++
		} else {
			failed++
		}
		if node, _ := pvNode(t, ctx, ns, "data-k-0"); node != on {
			t.Fatalf("case %d: the move ended %s but the claim is on %s", i, end.Status.Phase, node)
		}
		var pod *corev1.Pod
		if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			p, err := e.client.CoreV1().Pods(ns).Get(ctx, "k-0", metav1.GetOptions{})
			if err != nil || p.Status.Phase != corev1.PodRunning || p.Spec.NodeName != on || p.DeletionTimestamp != nil {
				return false, nil
			}
			pod = p
			return true, nil
		}); err != nil {
			t.Fatalf("case %d: k-0 not running on %s: %v; %s", i, on, err, podsOn(ctx, ns))
		}
		log := waitLogIn(t, ctx, logsOf(ws, on), ns, pod.Name, "sum=", 2*time.Minute)
		if sumIn(t, log) != want {
			t.Fatalf("case %d (%s volume, %s killed in %s, move %s): data on %s: %s, want sum %s", i, kc.backend, kc.role, kc.phase, end.Status.Phase, on, log, want)
		}
		if killed {
			hits++
		}
		logf("nodes: move kill %d: %s volume, %s killed in %s: %v; move %s (%s), data intact on %s", i, kc.backend, kc.role, kc.phase, killed, end.Status.Phase, end.Status.Message, on)
		_ = e.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		// The next case's volume needs the room this one's takes (the
		// workers' btrfs pools hold two): its volumes go first.
		if err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			vs, err := e.plinth.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			for _, v := range vs.Items {
				if strings.HasPrefix(v.Spec.Claim, ns+"/") {
					return false, nil
				}
			}
			return true, nil
		}); err != nil {
			t.Fatalf("case %d: the volumes of namespace %s are not gone: %v", i, ns, err)
		}
	}
	logf("nodes: %d moves with a plinth process killed (%d caught in their phase): %d done, %d rolled back, data intact in all", len(cases), hits, done, failed)
	if os.Getenv("PLINTH_MOVE_KILLS") == "all" && hits < 20 {
		t.Errorf("only %d of %d kills landed in their phase (want at least 20)", hits, len(cases))
	}
}

// killRole sends SIGKILL to the plinth process of role: the node agent on
// the source or target node, or the leading controller.
func killRole(t *testing.T, ctx context.Context, role, src, dst string) bool {
	t.Helper()
	if role == "controller" {
		pod, _, _ := leaderPod(t, ctx, controllerPods(t, ctx))
		if !killPod(t, pod, "controller") {
			return false
		}
		zero := int64(0) // a new pod, not a restart after a back-off (below)
		_ = e.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		return true
	}
	node := src
	if role == "target" {
		node = dst
	}
	l, err := e.client.CoreV1().Pods("plinth-system").List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=node", FieldSelector: "spec.nodeName=" + node})
	if err != nil || len(l.Items) == 0 {
		return false
	}
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil && strings.HasPrefix(p.Name, "plinth") && killPod(t, p, "node") {
			// The process is dead, as kill -9 leaves it. Its pod goes too,
			// so that the DaemonSet starts a new one at once: the kubelet
			// would restart the container after a back-off that doubles
			// with each of these kills, up to five minutes.
			zero := int64(0)
			_ = e.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
			return true
		}
	}
	return false
}
