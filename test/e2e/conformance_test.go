package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	images "github.com/plinth-dev/plinth/hack/image/oci"
	testimages "github.com/plinth-dev/plinth/test/e2e/images"
)

// conformanceBin is the directory test/conformance/build.sh filled (the external storage suite,
// kubectl, agnhost); set by make conformance. Without it the images below are not built and
// TestConformance skips.
func conformanceBin() string { return os.Getenv("PLINTH_CONFORMANCE_BIN") }

// A selection of the suite: which specs (a skip list, each entry with its reason), against which
// driver descriptions (test/conformance/*.yaml, one per pool type), with how many ginkgo processes.
type selection struct {
	skips   []skip
	drivers []string
	procs   int
}

type skip struct{ re, why string }

// Specs that cannot pass on this machine whatever the selection, each with its reason.
var machineSkips = []skip{
	{`should not mount / map unused volumes in a pod`,
		"its host-exec pod nsenters PID 1's mount namespace, which this VM forbids even to root (/proc/1/ns/*: EACCES)"},
	{`\[Disruptive\]`,
		"restarts or stops the kubelet over SSH with systemctl; the e2e node has neither (the e2e scenarios restart the kubelet themselves)"},
}

// selections: "quick" is what make test runs (bounded: no [Slow] or [Serial] specs, the pool
// types whose code paths differ: image files on xfs and btrfs subvolumes); "full" is make
// conformance (everything that can run here, on every pool type).
var selections = map[string]selection{
	"quick": {
		skips: append([]skip{
			{`\[Slow\]`, "not in make test's bounded selection (make conformance runs them)"},
			{`\[Serial\]`, "not in make test's bounded selection (make conformance runs them)"},
		}, machineSkips...),
		drivers: []string{"driver.yaml", "driver-btrfs.yaml"},
		procs:   4,
	},
	"full": {
		skips: append([]skip{
			{`should provision storage with any volume data source`,
				"deploys the hello-populator from k8s.io/kubernetes's testing manifests (test/e2e/testing-manifests, not in this repository) and its image, which this offline cluster lacks"},
		}, machineSkips...),
		drivers: []string{"driver.yaml", "driver-btrfs.yaml", "driver-ext4.yaml"},
		procs:   4,
	},
}

// conformanceImages are the images the storage specs' pods run, under the names
// k8s.io/kubernetes/test/utils/image/manifest.go gives them (all pulled IfNotPresent): busybox,
// nginx and glibc-dns-testing as a busybox userland (the specs give them commands), agnhost with
// that userland, and the pause image.
func conformanceImages(bin, pause string) ([]images.Spec, error) {
	shell, err := testimages.Shell()
	if err != nil {
		return nil, err
	}
	agnhost, err := images.Binary(filepath.Join(bin, "agnhost"), "/agnhost")
	if err != nil {
		return nil, err
	}
	p, err := images.Binary(pause, "/e2e-app")
	if err != nil {
		return nil, err
	}
	sh := []string{"/bin/sh"}
	return []images.Spec{
		{Ref: "registry.k8s.io/e2e-test-images/busybox:1.37.0-2", Cmd: sh, Files: shell},
		{Ref: "registry.k8s.io/e2e-test-images/nginx:1.27.0-2", Cmd: sh, Files: shell},
		// The multiVolume specs' pods (concurrent access, clones, restores) run shell commands in it.
		{Ref: "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1", Cmd: sh, Files: shell},
		{Ref: "registry.k8s.io/e2e-test-images/agnhost:2.66.1", Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
			Files: append(append([]images.File{}, shell...), agnhost)},
		{Ref: "registry.k8s.io/pause:3.10.2", Entrypoint: []string{"/e2e-app", "pause"}, Files: []images.File{p}},
	}, nil
}

var ginkgoSummary = regexp.MustCompile(`^(Ran \d+ of \d+ Specs|(SUCCESS|FAIL)! -- \d+ Passed)`)

// TestConformance runs Kubernetes' external storage suite (test/conformance) against the
// plinth this cluster runs: the selection PLINTH_CONFORMANCE names ("quick" for make test,
// "full" for make conformance), in parallel ginkgo processes. The whole output goes to
// conformance.log in the artifacts; each failure, the skipped specs grouped by reason and the
// ginkgo summary are printed. Afterwards no volume may be left behind.
func TestConformance(t *testing.T) {
	bin := conformanceBin()
	if bin == "" || e == nil {
		t.Skip("PLINTH_CONFORMANCE_BIN is not set (make test and make conformance build the suite and set it)")
	}
	name := os.Getenv("PLINTH_CONFORMANCE")
	if name == "" {
		name = "quick"
	}
	sel, ok := selections[name]
	if !ok {
		t.Fatalf("PLINTH_CONFORMANCE=%q: want quick or full", name)
	}
	if p, err := strconv.Atoi(os.Getenv("PLINTH_CONFORMANCE_PROCS")); err == nil && p > 0 {
		sel.procs = p
	}
	budget := 60 * time.Minute
	if d, ok := t.Deadline(); ok {
		budget = time.Until(d) - 5*time.Minute
	}
	var skips []string
	for _, s := range sel.skips {
		skips = append(skips, s.re)
		logf("conformance: skipped by selection %q: %s: %s", name, s.re, s.why)
	}
	report := filepath.Join(e.c.Dir, "logs", "conformance-report") // copied to the artifacts with the logs
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}
	focus := "External.Storage"
	if f := os.Getenv("PLINTH_CONFORMANCE_FOCUS"); f != "" {
		focus = f // a narrower selection, e.g. 'volumeExpand'
	}
	// The ginkgo CLI runs the compiled suite in sel.procs processes ([Serial] specs alone at
	// the end); what follows "--" goes to each process.
	args := []string{
		"--procs=" + strconv.Itoa(sel.procs),
		"--focus=" + focus,
		"--skip=" + strings.Join(skips, "|"),
		"--timeout=" + budget.String(),
		"--json-report=report.json",
		"--output-dir=" + report,
		"--no-color",
		"-v",
		filepath.Join(bin, "storage.test"),
		"--",
		"-kubeconfig=" + e.c.Kubeconfig,
		"-kubectl-path=" + filepath.Join(bin, "kubectl"),
		"-repo-root=" + e.repo,
		"-report-dir=" + report,
	}
	for _, d := range sel.drivers {
		args = append(args, "-storage.testdriver="+filepath.Join(e.repo, "test/conformance", d))
	}
	logPath := filepath.Join(e.c.Dir, "logs", "conformance.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	ctx, cancel := context.WithTimeout(context.Background(), budget+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "ginkgo"), args...)
	cmd.Dir = filepath.Join(e.repo, "test/conformance")
	cmd.WaitDelay = time.Minute
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	logf("conformance: %s %s", cmd.Path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	var summary []string
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		fmt.Fprintln(logFile, l)
		switch {
		case ginkgoSummary.MatchString(l):
			summary = append(summary, l)
		case strings.HasPrefix(l, "• [FAILED]") || strings.HasPrefix(l, "• [PANICKED]") || strings.HasPrefix(l, "• [TIMEDOUT]"):
			logf("conformance: %s", l)
		}
	}
	err = <-done
	logf("conformance: selection %q, %d processes, finished in %s; full output in %s (and the artifacts' cluster/conformance.log)",
		name, sel.procs, time.Since(start).Round(time.Second), logPath)
	res, rerr := readGinkgoReport(filepath.Join(report, "report.json"))
	if rerr != nil {
		t.Errorf("ginkgo report: %v", rerr)
	} else {
		res.log()
	}
	for _, s := range summary {
		logf("conformance summary: %s", s)
	}
	if err != nil {
		t.Errorf("external storage suite: %v", err)
	}
	if rerr == nil && len(res.failed) > 0 {
		t.Errorf("external storage suite: %d specs failed", len(res.failed))
	}
	// Every spec deletes what it made; nothing of it may stay behind.
	if err := waitNoVolumes(t, 3*time.Minute); err != nil {
		t.Error(err)
	}
}

// ginkgoResult is what one run of the suite did, from ginkgo's JSON report.
type ginkgoResult struct {
	passed, failed []string
	skipped        map[string][]string // reason (driver names taken out) -> specs
	runTime        time.Duration
}

// readGinkgoReport reads the parts of ginkgo's JSON report (github.com/onsi/ginkgo/v2/types.Report)
// this test prints.
func readGinkgoReport(path string) (*ginkgoResult, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var suites []struct {
		RunTime     time.Duration
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(b, &suites); err != nil {
		return nil, err
	}
	r := &ginkgoResult{skipped: map[string][]string{}}
	// The drivers' names (driver*.yaml) out of the reasons, so one reason groups across pool types.
	driver := regexp.MustCompile(`"?(plinth\.example\.com|plinth-[a-z0-9]+)"?`)
	for _, s := range suites {
		r.runTime += s.RunTime
		for _, sp := range s.SpecReports {
			if sp.LeafNodeType != "It" {
				continue // suite setup and teardown nodes
			}
			name := strings.Join(append(sp.ContainerHierarchyTexts, sp.LeafNodeText), " ")
			switch sp.State {
			case "passed":
				r.passed = append(r.passed, name)
			case "skipped":
				why := strings.TrimSpace(driver.ReplaceAllString(sp.Failure.Message, "plinth"))
				if why == "" {
					why = "left out by the selection's skip list"
				}
				r.skipped[why] = append(r.skipped[why], name)
			case "pending":
				r.skipped["pending"] = append(r.skipped["pending"], name)
			default: // failed, panicked, timedout, interrupted, aborted
				r.failed = append(r.failed, sp.State+": "+name)
			}
		}
	}
	return r, nil
}

func (r *ginkgoResult) log() {
	n := 0
	for _, v := range r.skipped {
		n += len(v)
	}
	reasons := make([]string, 0, len(r.skipped))
	for why := range r.skipped {
		reasons = append(reasons, why)
	}
	sort.Slice(reasons, func(i, j int) bool { return len(r.skipped[reasons[i]]) > len(r.skipped[reasons[j]]) })
	for _, why := range reasons {
		logf("conformance skipped %3d: %s", len(r.skipped[why]), why)
	}
	for _, f := range r.failed {
		logf("conformance FAILED: %s", f)
	}
	logf("conformance result: %d passed, %d failed, %d skipped (suite time %s)",
		len(r.passed), len(r.failed), n, r.runTime.Round(time.Second))
}

// waitNoVolumes waits until no PersistentVolume and no PlinthVolume is left.
func waitNoVolumes(t *testing.T, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var pvs, vols int
	for {
		pl, err := e.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err == nil {
			pvs = len(pl.Items)
		}
		vl, err2 := e.plinth.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{})
		if err2 == nil {
			vols = len(vl.Items)
		}
		if err == nil && err2 == nil && pvs == 0 && vols == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after the suite, %d PersistentVolumes and %d PlinthVolumes are left after %s", pvs, vols, d)
		case <-time.After(2 * time.Second):
		}
	}
}
