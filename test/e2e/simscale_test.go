package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// Issue 31's measurements around TestSimulatedNodes' burst: what the API
// server served and to whom, where the controller's CPU went, and how long
// a failover takes with the burst's volumes in the caches. Each is asked
// for by an environment variable; make bench-scale sets them.
//
//   PLINTH_SIM_CONTROLLER_ARGS  more flags for plinth controller during the
//                               test (e.g. --kube-api-qps=400)
//   PLINTH_SIM_KCM_ARGS         flags for kube-controller-manager during
//                               the burst (e.g. --kube-api-qps=100)
//   PLINTH_SIM_PROFILE          a file: a CPU profile of plinth controller
//                               taken during the burst (--profiling), and
//                               its top functions logged
//   PLINTH_SIM_FAILOVER         set: after the burst, a standby controller
//                               takes over from the killed leader

const controllerMetrics = "http://127.0.0.1:9810" // the e2e chart's --metrics-address

// scaleKnobs applies PLINTH_SIM_CONTROLLER_ARGS, PLINTH_SIM_PROFILE's
// --profiling and PLINTH_SIM_KCM_ARGS, restoring each when the test ends.
func scaleKnobs(t *testing.T, ctx context.Context) {
	t.Helper()
	extra := strings.Fields(os.Getenv("PLINTH_SIM_CONTROLLER_ARGS"))
	if os.Getenv("PLINTH_SIM_PROFILE") != "" {
		extra = append(extra, "--profiling")
	}
	if len(extra) > 0 {
		// The suite's own install serves no metrics (two replicas on one
		// host network); this test runs one, and reads them.
		extra = append(extra, "--metrics-address=127.0.0.1:9810")
	}
	if len(extra) > 0 || os.Getenv("PLINTH_SIM_FAILOVER") != "" {
		// One replica: on this one-node cluster the Deployment's second
		// waits for a node with the host ports free, and a rollout (or a
		// wait for every replica) would never end. The failover brings
		// its own standby.
		deps := e.client.AppsV1().Deployments("plinth-system")
		d, err := deps.Get(ctx, "plinth-controller", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if was := *d.Spec.Replicas; was != 1 {
			t.Cleanup(func() {
				if _, err := deps.Patch(context.Background(), "plinth-controller", types.MergePatchType, []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, was)), metav1.PatchOptions{}); err != nil {
					t.Errorf("restore the controller's replicas: %v", err)
				}
			})
			scaleController(t, ctx, 1)
		}
	}
	if len(extra) > 0 {
		t.Cleanup(controllerArgs(t, ctx, extra...))
		logf("simulated nodes: plinth controller with %s", strings.Join(extra, " "))
	}
	if kcm := strings.Fields(os.Getenv("PLINTH_SIM_KCM_ARGS")); len(kcm) > 0 {
		t.Cleanup(func() {
			if err := e.c.RestartControllerManager(); err != nil {
				t.Errorf("restore kube-controller-manager: %v", err)
			}
		})
		if err := e.c.RestartControllerManager(kcm...); err != nil {
			t.Fatal(err)
		}
		waitControllerManager(t, ctx)
		logf("simulated nodes: kube-controller-manager with %s", strings.Join(kcm, " "))
	}
}

// requestCounts are a burst's API requests: the API server's own count of
// everything it served (apiserver_request_total, every client) and plinth
// controller's count of what it asked (plinth_api_requests_total).
type requestCounts struct{ server, controller, ops map[string]float64 }

func countRequests(ctx context.Context) requestCounts {
	return requestCounts{server: apiServerRequests(ctx), controller: apiRequestsAt(ctx, controllerMetrics+"/metrics"), ops: controllerOps(ctx)}
}

// controllerOps reads plinth_controller_operation_duration_seconds' sum
// and count by "operation result" ("... sum", "... count").
func controllerOps(ctx context.Context) map[string]float64 {
	b := fetchMetrics(ctx, controllerMetrics+"/metrics")
	if b == nil {
		return nil
	}
	out := map[string]float64{}
	for _, kind := range []string{"sum", "count"} {
		for k, v := range sumMetric(b, "plinth_controller_operation_duration_seconds_"+kind, "operation", "result") {
			out[k+" "+kind] = v
		}
	}
	return out
}

// apiServerRequests sums the API server's apiserver_request_total by
// "VERB resource[/subresource]".
func apiServerRequests(ctx context.Context) map[string]float64 {
	b, err := e.client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	for k, v := range sumMetric(b, "apiserver_request_total", "verb", "resource", "subresource") {
		verb, rest, _ := strings.Cut(k, " ")
		resource, sub, _ := strings.Cut(rest, " ")
		if sub != "" {
			resource += "/" + sub
		}
		out[verb+" "+resource] += v
	}
	return out
}

// requestTable prints the largest differences between two counts, with
// their rate over the window.
func requestTable(before, after map[string]float64, window time.Duration, top int) string {
	type row struct {
		key string
		n   float64
	}
	var rows []row
	var total float64
	for k, v := range after {
		if d := v - before[k]; d > 0 && !strings.HasPrefix(k, "WATCH ") && !strings.HasPrefix(k, "watch ") {
			rows = append(rows, row{k, d})
			total += d
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		return rows[i].n > rows[j].n || rows[i].n == rows[j].n && rows[i].key < rows[j].key
	})
	var buf bytes.Buffer
	w := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "request\tcount\tper second\n")
	for i, r := range rows {
		if i == top {
			fmt.Fprintf(w, "(%d more)\t\t\n", len(rows)-top)
			break
		}
		fmt.Fprintf(w, "%s\t%.0f\t%.1f\n", r.key, r.n, r.n/window.Seconds())
	}
	fmt.Fprintf(w, "all but watches\t%.0f\t%.1f\n", total, total/window.Seconds())
	_ = w.Flush()
	return buf.String()
}

func logRequests(before, after requestCounts, window time.Duration) {
	if before.server != nil && after.server != nil {
		logf("simulated nodes, burst: the API server's apiserver_request_total (every client) over %s:\n%s", window.Round(time.Second), requestTable(before.server, after.server, window, 20))
	}
	if before.ops != nil && after.ops != nil {
		// Each provisioning call holds one of the controller's --threads
		// workers until its node answers: threads / mean duration is the
		// rate they allow.
		var buf bytes.Buffer
		w := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
		fmt.Fprintf(w, "operation result\tcount\tmean s\n")
		var keys []string
		for k := range after.ops {
			if op, ok := strings.CutSuffix(k, " count"); ok && after.ops[k]-before.ops[k] > 0 {
				keys = append(keys, op)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			n := after.ops[k+" count"] - before.ops[k+" count"]
			fmt.Fprintf(w, "%s\t%.0f\t%.3f\n", k, n, (after.ops[k+" sum"]-before.ops[k+" sum"])/n)
		}
		_ = w.Flush()
		logf("simulated nodes, burst: plinth controller's operations (plinth_controller_operation_duration_seconds):\n%s", buf.String())
	}
	if before.controller != nil && after.controller != nil {
		logf("simulated nodes, burst: plinth controller's plinth_api_requests_total (verb resource code) over %s:\n%s", window.Round(time.Second), requestTable(before.controller, after.controller, window, 20))
	}
}

// profileController takes a CPU profile of the leading controller for
// seconds into file and returns a func that waits for it and logs its top
// functions.
func profileController(t *testing.T, ctx context.Context, file string, seconds int) func() {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", controllerMetrics, seconds), nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("profile: %s", resp.Status)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			return os.WriteFile(file, b, 0o644)
		}()
	}()
	return func() {
		if err := <-done; err != nil {
			t.Errorf("CPU profile of plinth controller: %v", err)
			return
		}
		for _, mode := range []string{"-top", "-top -cum"} {
			args := append([]string{"tool", "pprof"}, strings.Fields(mode)...)
			out, err := exec.CommandContext(ctx, "go", append(args, "-nodecount=35", file)...).CombinedOutput()
			if err != nil {
				t.Errorf("go tool pprof: %v: %s", err, out)
				return
			}
			logf("simulated nodes, burst: plinth controller's CPU profile (%d s, %s), pprof %s:\n%s", seconds, file, mode, out)
		}
	}
}

// heapProfile logs where the leading controller's live heap is (the
// informers' objects, the reservations) into file.
func heapProfile(t *testing.T, ctx context.Context, file string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, controllerMetrics+"/debug/pprof/heap?gc=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("heap profile of plinth controller: %v", err)
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	if err == nil {
		err = os.WriteFile(file, b, 0o644)
	}
	if err != nil {
		t.Errorf("heap profile of plinth controller: %v", err)
		return
	}
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=25", file).CombinedOutput()
	if err != nil {
		t.Errorf("go tool pprof: %v: %s", err, out)
		return
	}
	logf("simulated nodes: plinth controller's live heap after the burst (%s):\n%s", file, out)
}

// simFailover measures a failover with the burst's volumes in the
// caches: a standby plinth controller (the Deployment's flags, run on the
// host) campaigns for the Lease, the leading pod's process is killed with
// SIGKILL (it cannot hand the Lease over), and one new claim is created
// at once. It logs the time from the kill to the Lease changing hands and
// to the new claim's PV, and which replica made it.
func simFailover(t *testing.T, ctx context.Context, client kubernetes.Interface, ns string) {
	t.Helper()
	d, err := e.client.AppsV1().Deployments("plinth-system").Get(ctx, "plinth-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	lease := 8 * time.Second // the default
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		switch {
		case strings.HasPrefix(a, "--metrics-address="), a == "--profiling":
			continue
		case strings.HasPrefix(a, "--leader-elect-lease-duration="):
			if v, err := time.ParseDuration(strings.TrimPrefix(a, "--leader-elect-lease-duration=")); err == nil {
				lease = v
			}
		}
		args = append(args, a)
	}
	args = append(args, "--metrics-address=127.0.0.1:9811", "--kubeconfig="+e.c.Kubeconfig)
	logFile := filepath.Join(t.TempDir(), "standby.log")
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	sctx, stop := context.WithCancel(context.Background())
	standby := exec.CommandContext(sctx, e.plinthBin, args...)
	standby.Env = append(os.Environ(), "POD_NAMESPACE=plinth-system", "POD_NAME=standby")
	standby.Stdout, standby.Stderr = lf, lf
	standby.Cancel = func() error { return standby.Process.Signal(syscall.SIGTERM) }
	standby.WaitDelay = 30 * time.Second
	if err := standby.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stop()
		_ = standby.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("standby controller's log:\n%s", tail(b, 4000))
		}
		// The pod's controller, restarted by its kubelet, leads again.
		if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			d, err := e.client.AppsV1().Deployments("plinth-system").Get(ctx, "plinth-controller", metav1.GetOptions{})
			return err == nil && d.Status.ReadyReplicas == *d.Spec.Replicas, nil
		}); err != nil {
			t.Errorf("controller pod not ready again after the failover: %v", err)
		}
	}()
	// The standby is up (its health endpoint answers) and has campaigned.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		resp, err := http.Get("http://127.0.0.1:9811/healthz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}); err != nil {
		t.Fatalf("standby controller not serving: %v", err)
	}
	// Its caches fill (every claim, PV and volume object) while it waits,
	// as a standby's have long done when its leader dies.
	time.Sleep(15 * time.Second)
	var volumes int
	if pvs, err := e.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{ResourceVersion: "0"}); err == nil {
		volumes = len(pvs.Items)
	}
	var killed int
	for pid := range controllerProcs(t) {
		if pid == standby.Process.Pid {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed++
		}
	}
	if killed == 0 {
		t.Fatal("no leading controller process to kill")
	}
	at := time.Now()
	name := "failover"
	if _, err := client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc(name, simClass, strconv.Itoa(simSize), true), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	leaseName := "plinth-controller-" + strings.ReplaceAll(driver, ".", "-")
	var leaseAt, pvAt time.Duration
	var holder string
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		if leaseAt == 0 {
			if l, err := e.client.CoordinationV1().Leases("plinth-system").Get(ctx, leaseName, metav1.GetOptions{}); err == nil &&
				l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && l.Spec.AcquireTime != nil && l.Spec.AcquireTime.Time.After(at.Add(-time.Second)) {
				leaseAt, holder = time.Since(at), *l.Spec.HolderIdentity
			}
		}
		c, err := client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && c.Spec.VolumeName != "" {
			pvAt = time.Since(at)
			return true, nil
		}
		if err == nil {
			// the claim's volumeName is the binder's; the PV appears first
			pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
			if err == nil {
				for _, pv := range pvs.Items {
					if r := pv.Spec.ClaimRef; r != nil && r.Namespace == ns && r.Name == name {
						pvAt = time.Since(at)
						return true, nil
					}
				}
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("no PV for the claim made after the leader was killed: %v", err)
	}
	who := "the restarted pod"
	if strings.HasPrefix(holder, "standby_") {
		who = "the standby"
	}
	var tab bytes.Buffer
	w := tabwriter.NewWriter(&tab, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "PVs in the cluster\tLease duration\tkill -> Lease taken\tkill -> first PV made\tnew leader\n")
	fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", volumes, lease, leaseAt.Round(10*time.Millisecond), pvAt.Round(10*time.Millisecond), who)
	_ = w.Flush()
	logf("simulated nodes, failover (leader killed with SIGKILL, a standby campaigning):\n%s", tab.String())
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// keepDaemonSetOffSimNodes keeps plinth's node DaemonSet off the simulated
// nodes for the test: they run no kubelet, so its pods there could never
// start, and at a thousand nodes the scheduler retried a thousand Pending
// pods at every PV and claim event (160 s of its CPU, and the API server's,
// in a 10,000-claim burst). The host's node pod rolls once each way.
func keepDaemonSetOffSimNodes(t *testing.T, ctx context.Context) {
	t.Helper()
	dss := e.client.AppsV1().DaemonSets("plinth-system")
	set := func(ctx context.Context, affinity string) {
		patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"affinity":%s}}}}`, affinity)
		ds, err := dss.Patch(ctx, "plinth-node", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		gen := ds.Generation
		if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			ds, err := dss.Get(ctx, "plinth-node", metav1.GetOptions{})
			return err == nil && ds.Status.ObservedGeneration >= gen && ds.Status.UpdatedNumberScheduled == ds.Status.DesiredNumberScheduled &&
				ds.Status.NumberReady == ds.Status.DesiredNumberScheduled, nil
		}); err != nil {
			t.Fatalf("plinth-node rollout: %v; pods: %s", err, podsOn(ctx, "plinth-system"))
		}
	}
	set(ctx, `{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"plinth.example.com/simulated","operator":"DoesNotExist"}]}]}}}`)
	t.Cleanup(func() { set(context.Background(), "null") })
}
