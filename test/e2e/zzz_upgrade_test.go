package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/test/e2e/cluster"
)

// TestZZUpgrade runs last: the previous release (RELEASES' newest line,
// built from history with its own image recipe) is installed with its own
// chart through Helm, volumes on every pool type are made and used by pods
// (image files with xfs and ext4, a btrfs subvolume, a raw block image, a
// whole disk), with a snapshot, a clone and a pod holding two GPUs from the
// device plugin; then `helm upgrade` to the tree under test. No pod
// restarts, no mount changes (mount IDs from mountinfo), the data is
// intact; the old volumes still expand, snapshot, restore and delete; the
// device plugin registers again and the kubelet still counts the old pod's
// GPUs. Then `helm rollback` to the previous release, which serves the
// volumes the new one made.
//
// Then the GPUs through DRA on the previous release, a pod with a claim,
// and the upgrade again: the claim is not prepared a second time, and the
// new release unprepares it.
func TestZZUpgrade(t *testing.T) {
	need(t)
	if os.Getenv("PLINTH_UPGRADE") == "skip" {
		t.Skip("PLINTH_UPGRADE=skip")
	}
	helm, err := exec.LookPath(envOr("HELM", "helm"))
	if err != nil {
		t.Fatalf("helm: %v (.ci/install-deps installs it)", err)
	}
	defer timed(t, "upgrade from the previous release")()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	version, commit := previousRelease(t)
	oldTree, tar := buildRelease(t, ctx, version, commit)
	if err := e.c.ImportImage(ctx, tar); err != nil {
		t.Fatal(err)
	}
	h := helmCmd{bin: helm, kubeconfig: e.c.Kubeconfig}

	// The previous release, installed as its users install it. The
	// workloads of the install before (kustomize's or the chart render's)
	// go first: their selectors are immutable; the pools stay.
	removeWorkloads(t, ctx)
	oldChart := filepath.Join(oldTree, "charts/plinth")
	start := time.Now()
	h.run(t, ctx, "install", "plinth", oldChart, "--namespace", "plinth-system", "--take-ownership",
		"-f", filepath.Join(oldChart, "ci/e2e-values.yaml"), "--set", "image.tag="+version, "--wait", "--timeout", "5m")
	oldPod := waitNodePod(t, ctx, "plinth.example.com/plinth:"+version, "")
	if err := e.waitPlinth(ctx); err != nil {
		t.Fatal(err)
	}
	logf("upgrade: %s (%s) installed with its chart in %s", version, commit[:12], time.Since(start).Round(time.Millisecond))

	// Volumes on every pool type, used by pods, made by the previous release.
	ns := namespace(t, ctx, "upgrade")
	type use struct{ claim, class, size, content string }
	files := []use{
		{"xfs", "plinth-local", "256Mi", "on-xfs-" + version},
		{"ext4", "plinth-small", "64Mi", "on-ext4-" + version},
		{"btrfs", "plinth-btrfs", "256Mi", "on-btrfs-" + version},
	}
	for _, u := range files {
		claimAndPod(t, ctx, ns, pvc(u.claim, u.class, u.size, false), appPod(u.claim, u.claim, false, "write", "/data/f", u.content))
		waitLog(t, ctx, ns, u.claim, "content="+u.content, time.Minute)
	}
	for _, b := range []struct{ claim, class, size string }{{"block", "plinth-local", "64Mi"}, {"disk", "plinth-whole-disk", "32Mi"}} {
		claimAndPod(t, ctx, ns, pvc(b.claim, b.class, b.size, true), appPod(b.claim, b.claim, true, "block", "/dev/xvda"))
		if log := waitLog(t, ctx, ns, b.claim, "roundtrip=", time.Minute); !strings.Contains(log, "roundtrip=true") {
			t.Fatalf("%s volume: %s", b.claim, log)
		}
	}
	sc := snaps(t)
	takeSnapshot(t, ctx, sc, ns, "btrfs-before", "btrfs")
	claimAndPod(t, ctx, ns, fromSource(pvc("xfs-clone", "plinth-local", "256Mi", false), "", "xfs"), appPod("xfs-clone", "xfs-clone", false, "read", "/data/f"))
	waitLog(t, ctx, ns, "xfs-clone", "content=on-xfs-"+version, time.Minute)
	if _, err := e.client.CoreV1().Pods(ns).Create(ctx, gpuLimitPod("gpus", 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodRunning(t, ctx, ns, "gpus", 2*time.Minute)
	gpuEnv := lineWith(waitLog(t, ctx, ns, "gpus", "env=", time.Minute), "env=")
	pods := []string{"xfs", "ext4", "btrfs", "block", "disk", "xfs-clone", "gpus"}
	before := podStates(t, ctx, ns, pods)
	mounts := podMounts(t, ctx, ns, pods)
	// Four filesystem volumes staged and published, two block volumes
	// published (a bind of the device and the kubelet's own).
	if len(mounts) < 12 {
		t.Fatalf("mountinfo shows %d mounts of the pods' volumes: %v", len(mounts), mounts)
	}

	// The upgrade: the CRDs first (Helm installs a chart's crds/ but never
	// upgrades them; docs/install.md), then the chart of the tree under test
	// with its default image tag.
	crds := readCRDs(t, filepath.Join(e.repo, "charts/plinth/crds"))
	if err := apply(ctx, e.cfg, crds); err != nil {
		t.Fatal(err)
	}
	chart := filepath.Join(e.repo, "charts/plinth")
	start = time.Now()
	h.run(t, ctx, "upgrade", "plinth", chart, "--namespace", "plinth-system",
		"-f", filepath.Join(chart, "ci/e2e-values.yaml"), "--wait", "--timeout", "5m")
	newPod := waitNodePod(t, ctx, "plinth.example.com/plinth:dev", oldPod)
	waitRegistered(t, ctx)
	if err := e.waitPlinth(ctx); err != nil {
		t.Fatal(err)
	}
	logf("upgrade: helm upgrade to the tree under test: plinth node registered again %s after the upgrade began", time.Since(start).Round(time.Millisecond))

	// Nothing the pods hold changed.
	checkUntouched := func(stage string) {
		t.Helper()
		if after := podStates(t, ctx, ns, pods); !equalMaps(before, after) {
			t.Errorf("%s: the pods changed: before %v, after %v", stage, before, after)
		}
		if after := podMounts(t, ctx, ns, pods); !equalMaps(mounts, after) {
			t.Errorf("%s: the pods' mounts changed (mount point -> mount ID and source):\nbefore %v\nafter  %v", stage, mounts, after)
		}
		for _, u := range files {
			if got := readPodFile(t, ctx, ns, u.claim, u.claim, "f"); got != u.content {
				t.Errorf("%s: %s holds %q, want %q", stage, u.claim, got, u.content)
			}
		}
		for _, b := range []string{"block", "disk"} {
			if !contains(pods, b) {
				continue
			}
			if !blockPattern(t, ctx, ns, b, b) {
				t.Errorf("%s: the %s volume lost what its pod wrote", stage, b)
			}
		}
	}
	checkUntouched("after the upgrade")

	// The kubelet still counts the old pod's two GPUs: six are left, and a
	// pod asking for six runs beside it on devices of its own.
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		n, err := e.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		q := n.Status.Allocatable["example.com/gpu"]
		return q.Value() == 8, nil
	}); err != nil {
		t.Fatalf("example.com/gpu allocatable after the upgrade: %v", err)
	}
	if _, err := e.client.CoreV1().Pods(ns).Create(ctx, gpuLimitPod("more-gpus", 6), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodRunning(t, ctx, ns, "more-gpus", 2*time.Minute)
	moreEnv := lineWith(waitLog(t, ctx, ns, "more-gpus", "env=", time.Minute), "env=")
	if overlap := sharedIDs(gpuEnv, moreEnv); len(overlap) > 0 {
		t.Errorf("GPUs handed out twice across the upgrade: %v (%s / %s)", overlap, gpuEnv, moreEnv)
	}
	deletePod(t, ctx, ns, "more-gpus")

	// The old volumes keep working: expansion online, a snapshot and its
	// restore, the restore of the snapshot the old release took, delete.
	expandClaim(t, ctx, ns, "xfs", "512Mi")
	takeSnapshot(t, ctx, sc, ns, "ext4-after", "ext4")
	claimAndPod(t, ctx, ns, fromSource(pvc("ext4-restore", "plinth-small", "64Mi", false), "ext4-after", ""), appPod("ext4-restore", "ext4-restore", false, "read", "/data/f"))
	waitLog(t, ctx, ns, "ext4-restore", "content=on-ext4-"+version, time.Minute)
	claimAndPod(t, ctx, ns, fromSource(pvc("btrfs-restore", "plinth-btrfs", "256Mi", false), "btrfs-before", ""), appPod("btrfs-restore", "btrfs-restore", false, "read", "/data/f"))
	waitLog(t, ctx, ns, "btrfs-restore", "content=on-btrfs-"+version, time.Minute)
	deleteClaim(t, ctx, ns, "block", "block")
	// What the rollback must leave alone: the pods left and the two the new
	// release's restores made.
	pods = append(remove(pods, "block"), "ext4-restore", "btrfs-restore")
	before = podStates(t, ctx, ns, pods)
	mounts = podMounts(t, ctx, ns, pods)

	// Back to the previous release: it serves what the new one made and
	// changed, or refuses it clearly; the pods notice nothing either way.
	start = time.Now()
	h.run(t, ctx, "rollback", "plinth", "1", "--namespace", "plinth-system")
	// The previous release's chart surges its controller's rollout, and
	// on the host network (the e2e values) the surge pod waits for the
	// ports the running one holds: as its operator would, delete the
	// running one (this tree's chart replaces one pod at a time there).
	waitControllerRollout(t, ctx, "plinth.example.com/plinth:"+version)
	waitNodePod(t, ctx, "plinth.example.com/plinth:"+version, newPod)
	waitRegistered(t, ctx)
	if err := e.waitPlinth(ctx); err != nil {
		t.Fatal(err)
	}
	logf("upgrade: helm rollback to %s: plinth node registered again %s after the rollback began", version, time.Since(start).Round(time.Millisecond))
	checkUntouched("after the rollback")
	// The previous release deletes a volume the new one made.
	deleteClaim(t, ctx, ns, "ext4-restore", "ext4-restore")
	for _, p := range []string{"xfs", "ext4", "btrfs", "disk", "xfs-clone", "gpus", "btrfs-restore"} {
		deletePod(t, ctx, ns, p)
	}
	for _, s := range []string{"btrfs-before", "ext4-after"} {
		if err := sc.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, s, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	}
	for _, c := range []string{"xfs", "ext4", "btrfs", "disk", "xfs-clone", "btrfs-restore"} {
		deleteClaim(t, ctx, ns, c, "")
	}
	logf("upgrade: kubectl plinth status:\n%s", kubectlPlinthAllowFail("status"))

	upgradeDRA(t, ctx, h, ns, version, oldChart, chart)
}

// upgradeDRA: the GPUs through DRA on the previous release (its chart with
// a device config that says api: dra), a pod with a claim, then helm
// upgrade to the tree under test: the pod goes on, the claim is not
// prepared a second time (the new process answers from the checkpoint it
// reads), and the new release unprepares it when the pod goes.
func upgradeDRA(t *testing.T, ctx context.Context, h helmCmd, ns, version, oldChart, chart string) {
	t.Helper()
	dra := filepath.Join(t.TempDir(), "dra-values.yaml")
	if err := os.WriteFile(dra, []byte(`node:
  deviceConfig:
    apiVersion: plinth.example.com/v1alpha1
    kind: DeviceConfig
    resources:
      - name: example.com/gpu
        api: dra
        selector: {classes: ["0x03"], drivers: [nvidia, amdgpu, i915, xe]}
        env: {PLINTH_GPU_DEVICES: ids}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	// The chart makes the DRA resource's DeviceClass (gpu.example.com);
	// one made before (TestZDRA applies deploy/overlays/dra's) is taken over.
	before, err := hostPlinthPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.run(t, ctx, "upgrade", "plinth", oldChart, "--namespace", "plinth-system", "--take-ownership", "-f", filepath.Join(oldChart, "ci/e2e-values.yaml"),
		"-f", dra, "--set", "image.tag="+version, "--wait", "--timeout", "5m")
	// The previous release's chart does not roll its pods on a config
	// change (this tree's does: checksum/config): restart the node's.
	if p, err := hostPlinthPod(ctx); err == nil && p.UID == before.UID {
		if err := e.client.CoreV1().Pods("plinth-system").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	draPod := waitNodePod(t, ctx, "plinth.example.com/plinth:"+version, string(before.UID))
	waitDRA := func() {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			devs, err := nodeDevices(ctx)
			return err == nil && len(devs) == 8 && registrations(t, ctx)["dra"] >= 1, nil
		}); err != nil {
			devs, _ := nodeDevices(ctx)
			t.Fatalf("8 GPUs not published through DRA: %d devices, registrations %v", len(devs), registrations(t, ctx))
		}
	}
	waitDRA()
	if _, err := e.client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, claimTemplate("one", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CoreV1().Pods(ns).Create(ctx, gpuClaimPod("dra", "one"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodRunning(t, ctx, ns, "dra", 2*time.Minute)
	env := lineWith(waitLog(t, ctx, ns, "dra", "env=", time.Minute), "env=")
	waitPrepared(t, ctx, 1)
	claims := preparedClaims(t)
	state := podStates(t, ctx, ns, []string{"dra"})

	// The DaemonSet replaces an old pod that is not ready at once, surge or
	// not: the old one must be ready, as it is in a cluster that runs.
	waitNodeReady(t, ctx, draPod)
	start := time.Now()
	stopWatch := watchDRA(ctx)
	h.run(t, ctx, "upgrade", "plinth", chart, "--namespace", "plinth-system", "--take-ownership", "-f", filepath.Join(chart, "ci/e2e-values.yaml"),
		"-f", dra, "--wait", "--timeout", "5m")
	newPod := waitNodePod(t, ctx, "plinth.example.com/plinth:dev", draPod)
	waitDRA()
	gap, seen, samples := stopWatch()
	logf("upgrade: with DRA: the new plinth node took over %s after helm upgrade began; longest time without a DRA service %s "+
		"(%d samples, sockets %v)", time.Since(start).Round(time.Millisecond), gap.Round(time.Millisecond), samples, seen)
	// The new pod served DRA beside the old one (dra-<its UID>.sock) before
	// the old one stopped: the kubelet was never without a DRA service.
	if gap > 100*time.Millisecond || !contains(seen, "dra-"+newPod+".sock") {
		t.Errorf("the kubelet was without a DRA service for %s during the upgrade (sockets served: %v, want dra-%s.sock among them)", gap, seen, newPod)
	}
	time.Sleep(2 * time.Second) // room for a prepare the kubelet might repeat
	if got := podStates(t, ctx, ns, []string{"dra"}); !equalMaps(state, got) {
		t.Errorf("the DRA pod changed across the upgrade: %v, then %v", state, got)
	}
	if got := preparedClaims(t); !equalMaps(claims, got) {
		t.Errorf("the DRA checkpoint's claims changed across the upgrade:\nbefore %v\nafter  %v", claims, got)
	}
	if n := nodeMetric(ctx, "plinth_dra_claim_prepare_duration_seconds_count"); n != 0 {
		t.Errorf("the new plinth node prepared %v claims; the pod's was prepared already (%s)", n, env)
	}

	// A rolling update of this tree's own DaemonSet (what `kubectl rollout
	// restart` does): the same, between two pods of one release.
	waitNodeReady(t, ctx, newPod)
	stopWatch = watchDRA(ctx)
	start = time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, start.Format(time.RFC3339Nano))
	if _, err := e.client.AppsV1().DaemonSets("plinth-system").Patch(ctx, "plinth-node", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	rolled := waitNodePod(t, ctx, "plinth.example.com/plinth:dev", newPod)
	waitDRA()
	gap, seen, samples = stopWatch()
	logf("upgrade: with DRA: rolling restart: the new pod took over %s after it began; longest time without a DRA service %s (%d samples, sockets %v)",
		time.Since(start).Round(time.Millisecond), gap.Round(time.Millisecond), samples, seen)
	if gap > 100*time.Millisecond || !contains(seen, "dra-"+newPod+".sock") || !contains(seen, "dra-"+rolled+".sock") {
		t.Errorf("the kubelet was without a DRA service for %s during the rolling restart (sockets served: %v, want dra-%s.sock and dra-%s.sock)", gap, seen, newPod, rolled)
	}
	if left, _ := filepath.Glob(filepath.Join(cluster.KubeletDir, "plugins", "plinth.example.com-dra", "*.sock")); len(left) != 1 {
		t.Errorf("DRA sockets after the rolling restart: %v, want the new pod's only", left)
	}
	if got := podStates(t, ctx, ns, []string{"dra"}); !equalMaps(state, got) {
		t.Errorf("the DRA pod changed across the rolling restart: %v, then %v", state, got)
	}
	if got := preparedClaims(t); !equalMaps(claims, got) {
		t.Errorf("the DRA checkpoint's claims changed across the rolling restart:\nbefore %v\nafter  %v", claims, got)
	}
	if n := nodeMetric(ctx, "plinth_dra_claim_prepare_duration_seconds_count"); n != 0 {
		t.Errorf("the restarted plinth node prepared %v claims", n)
	}
	deletePod(t, ctx, ns, "dra")
	waitPrepared(t, ctx, 0)
	logf("upgrade: with DRA: the claim prepared by %s stayed prepared across the upgrade and a rolling restart and was unprepared by the newest pod", version)
}

// preparedClaims is plinth node's DRA checkpoint: claim UID -> what it
// recorded.
func preparedClaims(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(hostRoot, "state", "dra", "prepared.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cp struct {
		Claims map[string]json.RawMessage `json:"claims"`
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		t.Fatalf("DRA checkpoint: %v", err)
	}
	out := map[string]string{}
	for k, v := range cp.Claims {
		var c bytes.Buffer
		if err := json.Compact(&c, v); err != nil {
			t.Fatal(err)
		}
		out[k] = c.String() // as recorded, whatever the indentation
	}
	return out
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// previousRelease is RELEASES' newest line.
func previousRelease(t *testing.T) (version, commit string) {
	t.Helper()
	f, err := os.Open(filepath.Join(e.repo, "RELEASES"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if fs := strings.Fields(l); len(fs) >= 2 {
			version, commit = fs[0], fs[1]
		}
	}
	if version == "" {
		t.Fatal("RELEASES names no release")
	}
	return version, commit
}

// buildRelease writes the commit's tree to a directory and builds its
// image as that tree's make image did: its own plinth binary and its own
// image recipe (hack/image), tagged plinth.example.com/plinth:<version>.
func buildRelease(t *testing.T, ctx context.Context, version, commit string) (tree, tar string) {
	t.Helper()
	start := time.Now()
	if _, err := run(ctx, "git", "-C", e.repo, "cat-file", "-e", commit+"^{commit}"); err != nil {
		t.Fatalf("release %s: commit %s is not in this clone's history (a shallow clone? fetch it, or PLINTH_UPGRADE=skip): %v", version, commit, err)
	}
	tree = t.TempDir()
	tarball := filepath.Join(t.TempDir(), "release.tar")
	if out, err := run(ctx, "git", "-C", e.repo, "archive", "--format=tar", "-o", tarball, commit); err != nil {
		t.Fatalf("git archive %s: %v: %s", commit, err, out)
	}
	if out, err := run(ctx, "tar", "-x", "-C", tree, "-f", tarball); err != nil {
		t.Fatalf("untar %s: %v: %s", commit, err, out)
	}
	bin := filepath.Join(tree, "bin/plinth")
	tar = filepath.Join(tree, "_out/plinth-image.tar")
	if err := os.MkdirAll(filepath.Dir(tar), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"build", "-trimpath", "-ldflags", "-s -w -X main.version=" + version + " -X main.commit=" + commit, "-o", bin, "./cmd/plinth"},
		{"run", "./hack/image", "--plinth", bin, "--tag", "plinth.example.com/plinth:" + version, "--version", version, "--revision", commit, "--out", tar},
	} {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = tree
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("release %s: go %s: %v: %s", version, args[0], err, out)
		}
	}
	logf("upgrade: %s built from %s in %s", version, commit[:12], time.Since(start).Round(time.Millisecond))
	return tree, tar
}

type helmCmd struct{ bin, kubeconfig string }

func (h helmCmd) run(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, h.bin, append([]string{"--kubeconfig", h.kubeconfig}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm %s: %v: %s\nplinth-system: %s", strings.Join(args, " "), err, out, podsIn(ctx, "plinth-system"))
	}
}

func podsIn(ctx context.Context, ns string) string {
	l, err := e.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range l.Items {
		fmt.Fprintf(&b, "\n  %s %s %s", p.Name, p.Status.Phase, p.Spec.Containers[0].Image)
		for _, c := range p.Status.ContainerStatuses {
			if c.State.Waiting != nil {
				fmt.Fprintf(&b, " waiting %s: %s", c.State.Waiting.Reason, c.State.Waiting.Message)
			}
		}
	}
	return b.String() + events(ctx, ns)
}

// removeWorkloads deletes plinth's Deployment and DaemonSet and waits for
// their pods to go.
func removeWorkloads(t *testing.T, ctx context.Context) {
	t.Helper()
	fg := metav1.DeletePropagationForeground
	if err := e.client.AppsV1().Deployments("plinth-system").Delete(ctx, "plinth-controller", metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := e.client.AppsV1().DaemonSets("plinth-system").Delete(ctx, "plinth-node", metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := e.client.CoreV1().Pods("plinth-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		_, errD := e.client.AppsV1().DaemonSets("plinth-system").Get(ctx, "plinth-node", metav1.GetOptions{})
		_, errC := e.client.AppsV1().Deployments("plinth-system").Get(ctx, "plinth-controller", metav1.GetOptions{})
		return len(pods.Items) == 0 && apierrors.IsNotFound(errD) && apierrors.IsNotFound(errC), nil
	}); err != nil {
		t.Fatalf("plinth's workloads did not go: %v", err)
	}
}

// waitNodePod waits until the host node's only plinth pod (a surge
// rolling update's old pod gone) runs image and is not the pod whose UID is
// not, and returns its UID.
func waitNodePod(t *testing.T, ctx context.Context, image string, not string) string {
	t.Helper()
	var last, uid string
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := e.client.CoreV1().Pods("plinth-system").List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/component=node", FieldSelector: "spec.nodeName=" + nodeName})
		if err != nil {
			return false, nil
		}
		last = ""
		for _, p := range l.Items {
			last += fmt.Sprintf(" [%s %s %s deleting=%v]", p.Name, p.Spec.Containers[0].Image, p.Status.Phase, p.DeletionTimestamp != nil)
		}
		if len(l.Items) != 1 {
			return false, nil
		}
		p := l.Items[0]
		uid = string(p.UID)
		return uid != not && p.DeletionTimestamp == nil && p.Spec.Containers[0].Image == image && p.Status.Phase == corev1.PodRunning, nil
	}); err != nil {
		t.Fatalf("no sole plinth node pod running %s: %v (last:%s)%s", image, err, last, podsIn(ctx, "plinth-system"))
	}
	return uid
}

// waitNodeReady waits until the host node's plinth pod uid is Ready.
func waitNodeReady(t *testing.T, ctx context.Context, uid string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := hostPlinthPod(ctx)
		if err != nil || string(p.UID) != uid {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("plinth node pod %s not ready: %v%s", uid, err, podsIn(ctx, "plinth-system"))
	}
}

// watchDRA samples, every 10 ms until stop, whether some process serves
// the DRA gRPC service in the kubelet's plugin directory of the host node
// (any socket there that accepts a connection: dra.sock without rolling
// updates, dra-<pod UID>.sock with them). stop returns the longest time
// without one, the sockets seen and the number of samples.
func watchDRA(ctx context.Context) (stop func() (gap time.Duration, seen []string, samples int)) {
	dir := filepath.Join(cluster.KubeletDir, "plugins", "plinth.example.com-dra")
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var (
		gap     time.Duration
		samples int
		names   = map[string]bool{}
	)
	go func() {
		defer close(done)
		lastServed := time.Now()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			served := false
			socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
			for _, s := range socks {
				c, err := net.DialTimeout("unix", s, 50*time.Millisecond)
				if err == nil {
					c.Close()
					served = true
					names[filepath.Base(s)] = true
				}
			}
			now := time.Now()
			samples++
			if served {
				lastServed = now
			} else if d := now.Sub(lastServed); d > gap {
				gap = d
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() (time.Duration, []string, int) {
		cancel()
		<-done
		var seen []string
		for n := range names {
			seen = append(seen, n)
		}
		sort.Strings(seen)
		return gap, seen, samples
	}
}

// waitControllerRollout waits until the controller Deployment's pods all
// run image, deleting a pod of another image that blocks a Pending surge
// pod's host ports.
func waitControllerRollout(t *testing.T, ctx context.Context, image string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := e.client.AppsV1().Deployments("plinth-system").Get(ctx, "plinth-controller", metav1.GetOptions{})
		if err != nil || d.Spec.Replicas == nil {
			return false, nil
		}
		l, err := e.client.CoreV1().Pods("plinth-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
		if err != nil {
			return false, nil
		}
		pending, ready := false, 0
		for _, p := range l.Items {
			if p.Spec.Containers[0].Image == image && p.Status.Phase == corev1.PodPending {
				pending = true
			}
		}
		for _, p := range l.Items {
			switch {
			case p.DeletionTimestamp != nil:
			case p.Spec.Containers[0].Image != image && pending && p.Status.Phase == corev1.PodRunning:
				logf("upgrade: deleting controller pod %s (%s): its host ports hold the new pod Pending", p.Name, p.Spec.Containers[0].Image)
				_ = e.client.CoreV1().Pods("plinth-system").Delete(ctx, p.Name, metav1.DeleteOptions{})
			case p.Spec.Containers[0].Image == image && p.Status.Phase == corev1.PodRunning:
				ready++
			}
		}
		return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == *d.Spec.Replicas &&
			d.Status.AvailableReplicas == *d.Spec.Replicas && int32(len(l.Items)) == *d.Spec.Replicas && int32(ready) == *d.Spec.Replicas, nil
	}); err != nil {
		t.Fatalf("the controller's rollout to %s did not finish: %v%s", image, err, podsIn(ctx, "plinth-system"))
	}
}

// waitRegistered waits until a new plinth node process registered its CSI
// driver and its device plugin with the kubelet.
func waitRegistered(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		regs := registrations(t, ctx)
		return regs["csi"] >= 1 && regs["device-plugin:example.com/gpu"] >= 1, nil
	}); err != nil {
		t.Fatalf("plinth node did not register with the kubelet: %v", registrations(t, ctx))
	}
}

// podStates is each pod's UID, container start and restart count.
func podStates(t *testing.T, ctx context.Context, ns string, names []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range names {
		p, err := e.client.CoreV1().Pods(ns).Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := "no status"
		if cs := p.Status.ContainerStatuses; len(cs) == 1 {
			started := ""
			if cs[0].State.Running != nil {
				started = cs[0].State.Running.StartedAt.UTC().Format(time.RFC3339)
			}
			st = fmt.Sprintf("%s restarts=%d started=%s ready=%t", p.Status.Phase, cs[0].RestartCount, started, cs[0].Ready)
		}
		out[n] = st
		out[n+"-uid"] = string(p.UID)
	}
	return out
}

// podMounts is every mount in this mount namespace that belongs to the
// pods' volumes: their publish targets (under the pods' directories) and
// the staging mounts of their PVs, mount point -> mount ID and source.
func podMounts(t *testing.T, ctx context.Context, ns string, names []string) map[string]string {
	t.Helper()
	var keys []string
	for _, n := range names {
		p, err := e.client.CoreV1().Pods(ns).Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, string(p.UID))
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim == nil {
				continue
			}
			c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, v.PersistentVolumeClaim.ClaimName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, c.Spec.VolumeName)
			// The staging mount: the kubelet names its directory after
			// the SHA-256 of the volume handle.
			pv, err := e.client.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if pv.Spec.CSI != nil {
				keys = append(keys, fmt.Sprintf("%x", sha256.Sum256([]byte(pv.Spec.CSI.VolumeHandle))))
			}
		}
	}
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) < 10 {
			continue
		}
		mp := f[4]
		if !strings.HasPrefix(mp, "/var/lib/kubelet/") || strings.Contains(mp, "kube-api-access") {
			continue
		}
		for _, k := range keys {
			if strings.Contains(mp, k) {
				sep := 6
				for sep < len(f) && f[sep] != "-" {
					sep++
				}
				src := ""
				if sep+2 < len(f) {
					src = f[sep+1] + " " + f[sep+2] + " " + f[3]
				}
				out[mp] = f[0] + " " + src
				break
			}
		}
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// readPodFile reads a file of the pod's volume through its publish target
// on the host.
func readPodFile(t *testing.T, ctx context.Context, ns, pod, claim, name string) string {
	t.Helper()
	p, err := e.client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("/var/lib/kubelet/pods", string(p.UID), "volumes/kubernetes.io~csi", c.Spec.VolumeName, "mount", name))
	if err != nil {
		return "error: " + err.Error()
	}
	return string(b)
}

// blockPattern reports whether the block volume published to the pod still
// holds what e2e-app's block command wrote at 4 KiB.
func blockPattern(t *testing.T, ctx context.Context, ns, pod, claim string) bool {
	t.Helper()
	p, err := e.client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish", c.Spec.VolumeName, string(p.UID))
	f, err := os.Open(dev)
	if err != nil {
		t.Errorf("open %s: %v", dev, err)
		return false
	}
	defer f.Close()
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 4096); err != nil {
		t.Errorf("read %s: %v", dev, err)
		return false
	}
	return bytes.Equal(got, bytes.Repeat([]byte("plinth-block"), 4096/12+1)[:4096])
}

func lineWith(log, prefix string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// sharedIDs are the device IDs two "devices" lines both name.
func sharedIDs(a, b string) []string {
	ids := func(l string) map[string]bool {
		m := map[string]bool{}
		for _, kv := range strings.Split(strings.TrimPrefix(l, "env="), ";") {
			if v, ok := strings.CutPrefix(kv, "PLINTH_GPU_DEVICES="); ok {
				for _, id := range strings.Split(v, ",") {
					m[id] = true
				}
			}
		}
		return m
	}
	var out []string
	mb := ids(b)
	for id := range ids(a) {
		if mb[id] {
			out = append(out, id)
		}
	}
	return out
}

func expandClaim(t *testing.T, ctx context.Context, ns, name, size string) {
	t.Helper()
	c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := resource.MustParse(size)
	c.Spec.Resources.Requests[corev1.ResourceStorage] = want
	if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		q := c.Status.Capacity[corev1.ResourceStorage]
		return q.Cmp(want) >= 0, nil
	}); err != nil {
		t.Fatalf("claim %s/%s did not grow to %s: %v; events: %s", ns, name, size, err, events(ctx, ns))
	}
}

// deleteClaim deletes the pod (when named) and the claim and waits until
// its volume is gone.
func deleteClaim(t *testing.T, ctx context.Context, ns, pod, claim string) {
	t.Helper()
	if claim == "" {
		claim, pod = pod, ""
	}
	if pod != "" {
		deletePod(t, ctx, ns, pod)
	}
	c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, claim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitVolumeGone(t, ctx, c.Spec.VolumeName)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func remove(list []string, s string) []string {
	var out []string
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

// readCRDs joins the YAML files of a crds/ directory.
func readCRDs(t *testing.T, dir string) []byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in %s: %v", dir, err)
	}
	var b bytes.Buffer
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("---\n")
		b.Write(raw)
		b.WriteString("\n")
	}
	return b.Bytes()
}

func kubectlPlinthAllowFail(args ...string) string {
	out, err := exec.Command(e.kubectlPlinth, append([]string{"--kubeconfig", e.c.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s(%v)", out, err)
	}
	return string(out)
}
