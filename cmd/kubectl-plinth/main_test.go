package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary run main() itself in a child process.
func TestMain(m *testing.M) {
	if os.Getenv("KUBECTL_PLINTH_RUN_MAIN") != "" {
		os.Args = append([]string{"kubectl-plinth"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runMain(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	// No cluster: a kubeconfig that does not exist.
	cmd.Env = append(os.Environ(), "KUBECTL_PLINTH_RUN_MAIN=1", "KUBECONFIG="+filepath.Join(t.TempDir(), "none"), "HOME="+t.TempDir())
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestHelpAndUnknownCommand(t *testing.T) {
	for _, arg := range []string{"--help", "-h", "help"} {
		if out, _, code := runMain(t, arg); code != 0 || !strings.Contains(out, "kubectl plinth disks") {
			t.Errorf("kubectl plinth %s: exit %d, %q; want the usage, exit 0", arg, code, out)
		}
	}
	// A typo is named before any kubeconfig is looked for.
	_, errOut, code := runMain(t, "dsks")
	if code != 2 || !strings.Contains(errOut, `unknown command "dsks"`) || strings.Contains(errOut, "kubeconfig") || strings.Contains(errOut, "configuration") {
		t.Errorf("unknown command: exit %d, %q", code, errOut)
	}
	if _, errOut, code := runMain(t, "--no-such-flag"); code != 2 || len(strings.Split(strings.TrimSpace(errOut), "\n")) != 2 {
		t.Errorf("bad flag: exit %d, %q", code, errOut)
	}
}

// kubectl plinth --version (and version) prints what plinth version
// prints first, without a cluster: the version, the commit (in a test
// binary, the Go toolchain's VCS stamp or unknown), the Go.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}, {"-o", "json", "--version"}} {
		out, errOut, code := runMain(t, args...)
		lines := strings.Split(out, "\n")
		if code != 0 || errOut != "" || len(lines) != 4 || lines[0] != "kubectl-plinth dev" || !strings.HasPrefix(lines[1], "commit: ") || lines[1] == "commit: " || !strings.HasPrefix(lines[2], "go: go1.") {
			t.Errorf("kubectl plinth %s: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
}

// kubectl plinth status against an API server that holds no plinth at all:
// it names what needs attention and exits 3; a server it cannot reach is
// an error, exit 1.
func TestStatusExit(t *testing.T) {
	lists := map[string]string{
		"/apis/coordination.k8s.io/v1/leases":             `{"kind":"LeaseList","apiVersion":"coordination.k8s.io/v1","metadata":{},"items":[]}`,
		"/api/v1/pods":                                    `{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}`,
		"/apis/plinth.example.com/v1alpha1/plinthnodes":   `{"kind":"PlinthNodeList","apiVersion":"plinth.example.com/v1alpha1","metadata":{},"items":[]}`,
		"/apis/plinth.example.com/v1alpha1/plinthvolumes": `{"kind":"PlinthVolumeList","apiVersion":"plinth.example.com/v1alpha1","metadata":{},"items":[]}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := lists[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()
	kubeconfig := func(server string) string {
		f := filepath.Join(t.TempDir(), "kubeconfig")
		cfg := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"" + server + "\"}}]\n" +
			"contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {}}]\n"
		if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	good := kubeconfig(srv.URL)
	out, errOut, code := runMain(t, "status", "--kubeconfig", good)
	if code != 3 || errOut != "" || !strings.Contains(out, "NEEDS ATTENTION (2):") || !strings.Contains(out, "controller: no pod") {
		t.Errorf("status: exit %d, stdout:\n%s\nstderr: %s", code, out, errOut)
	}
	out, _, code = runMain(t, "-o", "json", "status", "--kubeconfig", good)
	if code != 3 || !strings.Contains(out, `"mixedVersions": false`) {
		t.Errorf("status -o json: exit %d, stdout:\n%s", code, out)
	}
	srv.Close()
	if _, errOut, code := runMain(t, "status", "--kubeconfig", good); code != 1 || !strings.Contains(errOut, "list leases") {
		t.Errorf("status, no API server: exit %d, stderr %q", code, errOut)
	}
}
