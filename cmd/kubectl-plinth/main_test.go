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
