package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/test/e2e/images"
)

// conformanceBin is the directory test/conformance/build.sh filled (the external storage suite,
// kubectl, agnhost); set by make conformance. Without it the images below are not built and
// TestConformance skips.
func conformanceBin() string { return os.Getenv("PLINTH_CONFORMANCE_BIN") }

// conformanceSkips are the specs of the selection that cannot pass on this machine, each with
// its reason. The selection itself leaves out [Disruptive] and [Serial] specs.
var conformanceSkips = []struct{ re, why string }{
	{`\[Disruptive\]`, "not in this selection (make conformance runs non-disruptive specs)"},
	{`\[Serial\]`, "not in this selection (make conformance runs non-serial specs)"},
	{`should not mount / map unused volumes in a pod`,
		"its host-exec pod nsenters PID 1's mount namespace, which this VM forbids even to root (/proc/1/ns/*: EACCES)"},
}

// conformanceImages are the images the storage specs' pods run, under the names
// k8s.io/kubernetes/test/utils/image/manifest.go gives them (all pulled IfNotPresent): busybox
// and nginx as a busybox userland (the specs give them commands), agnhost with that userland,
// and the pause image.
func conformanceImages(bin, pause string) ([]images.Spec, error) {
	shell, err := images.Shell()
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
		{Ref: "registry.k8s.io/e2e-test-images/agnhost:2.66.1", Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
			Files: append(append([]images.File{}, shell...), agnhost)},
		{Ref: "registry.k8s.io/pause:3.10.2", Entrypoint: []string{"/e2e-app", "pause"}, Files: []images.File{p}},
	}, nil
}

var ginkgoSummary = regexp.MustCompile(`^(Ran \d+ of \d+ Specs|(SUCCESS|FAIL)! -- \d+ Passed)`)

// TestConformance runs Kubernetes' external storage suite (test/conformance) against the
// plinth this cluster runs, with test/conformance/driver.yaml: every [External Storage] spec that
// is neither [Disruptive] nor [Serial], one at a time. The whole output goes to
// conformance.log in the artifacts; the ginkgo summary and each failure are printed.
func TestConformance(t *testing.T) {
	bin := conformanceBin()
	if bin == "" || e == nil {
		t.Skip("PLINTH_CONFORMANCE_BIN is not set (make conformance builds the suite and sets it)")
	}
	budget := 60 * time.Minute
	if d, ok := t.Deadline(); ok {
		budget = time.Until(d) - 2*time.Minute
	}
	var skips []string
	for _, s := range conformanceSkips {
		skips = append(skips, s.re)
		t.Logf("skipped: %s: %s", s.re, s.why)
	}
	report := filepath.Join(e.c.Dir, "conformance")
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"-kubeconfig=" + e.c.Kubeconfig,
		"-kubectl-path=" + filepath.Join(bin, "kubectl"),
		"-repo-root=" + e.repo,
		"-storage.testdriver=" + filepath.Join(e.repo, "test/conformance/driver.yaml"),
		"-report-dir=" + report,
		"-ginkgo.skip=" + strings.Join(skips, "|"),
		"-ginkgo.timeout=" + budget.String(),
		"-ginkgo.no-color",
		"-ginkgo.v",
	}
	focus := "External.Storage"
	if f := os.Getenv("PLINTH_CONFORMANCE_FOCUS"); f != "" {
		focus = f // a narrower selection, e.g. 'volumeExpand'
	}
	args = append(args, "-ginkgo.focus="+focus)
	logPath := filepath.Join(e.c.Dir, "logs", "conformance.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	ctx, cancel := context.WithTimeout(context.Background(), budget+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "storage.test"), args...)
	cmd.Dir = filepath.Join(e.repo, "test/conformance")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	logf("conformance: %s %s", cmd.Path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	var summary, failures []string
	inFailures := false
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		fmt.Fprintln(logFile, l)
		switch {
		case ginkgoSummary.MatchString(l):
			summary = append(summary, l)
		case strings.HasPrefix(l, "Summarizing "):
			inFailures = true
		case inFailures && strings.Contains(l, "[FAIL]"):
			failures = append(failures, strings.TrimSpace(l))
		case strings.HasPrefix(l, "• [FAILED]") || strings.HasPrefix(l, "• [PANICKED]") || strings.HasPrefix(l, "• [TIMEDOUT]"):
			logf("conformance: %s", l)
		}
	}
	err = <-done
	// The output holds the full log; copy it where the artifacts go.
	logf("conformance: finished in %s; full output in %s (and the artifacts' cluster/conformance.log)", time.Since(start).Round(time.Second), logPath)
	for _, f := range failures {
		logf("conformance failure: %s", f)
	}
	for _, s := range summary {
		logf("conformance summary: %s", s)
	}
	if err != nil {
		t.Fatalf("external storage suite: %v (%d failures)", err, len(failures))
	}
}
