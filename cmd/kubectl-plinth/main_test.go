package main

import (
	"bytes"
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
