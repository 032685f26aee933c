package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary run main() itself in a child process.
func TestMain(m *testing.M) {
	if os.Getenv("PLINTH_RUN_MAIN") != "" {
		os.Args = append([]string{"plinth"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestJSONLogging(t *testing.T) {
	root := t.TempDir()
	cmd := exec.Command(os.Args[0], "standalone", "--logging-format=json", "--root", root,
		"--endpoint", "unix://"+filepath.Join(root, "csi.sock"), "--metrics-address=")
	cmd.Env = append(os.Environ(), "PLINTH_RUN_MAIN=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		if _, err := os.Stat(filepath.Join(root, "csi.sock")); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	lines := 0
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("not a JSON log line: %q", sc.Text())
		}
		if rec["msg"] == nil {
			t.Errorf("JSON line without msg: %v", rec)
		}
		lines++
	}
	if lines < 3 {
		t.Fatalf("%d JSON log lines:\n%s", lines, out.String())
	}
}

func TestBadFlagsExit2(t *testing.T) {
	cmd := exec.Command(os.Args[0], "standalone", "--logging-format=yaml", "--root", "relative")
	cmd.Env = append(os.Environ(), "PLINTH_RUN_MAIN=1")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want 2: %s", err, out)
	}
	if !bytes.Contains(out, []byte("logging-format")) && !bytes.Contains(out, []byte("format")) || !bytes.Contains(out, []byte("--root")) {
		t.Errorf("errors do not name the flags: %s", out)
	}
}

// run runs plinth with args in a child process: its output and exit code.
func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "PLINTH_RUN_MAIN=1")
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

func TestHelpAndVersion(t *testing.T) {
	for _, arg := range []string{"help", "--help", "-h"} {
		out, errOut, code := run(t, arg)
		if code != 0 || !strings.Contains(out, "Usage:") || errOut != "" {
			t.Errorf("plinth %s: exit %d, stdout %q, stderr %q; want the usage on stdout, exit 0", arg, code, out, errOut)
		}
	}
	for _, arg := range []string{"version", "--version"} {
		out, _, code := run(t, arg)
		for _, want := range []string{"plinth ", "commit: ", "go: go1.", "CSI spec: v1.", "device plugin API: v1beta1", "plinth.example.com/v1alpha1"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("plinth %s: exit %d, %q lacks %q", arg, code, out, want)
			}
		}
	}
	if _, errOut, code := run(t, "frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", code, errOut)
	}
}

// A bad flag is one line naming it and where to look, not every flag's
// usage; -h prints the flags with the role's own defaults.
func TestFlagErrorsAndRoleHelp(t *testing.T) {
	_, errOut, code := run(t, "node", "--no-such-flag")
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if code != 2 || len(lines) != 2 || !strings.Contains(lines[0], "no-such-flag") || !strings.Contains(lines[1], `"plinth node -h"`) {
		t.Errorf("bad flag: exit %d, stderr:\n%s", code, errOut)
	}
	if _, errOut, code := run(t, "standalone", "stray"); code != 2 || !strings.Contains(errOut, `unexpected argument "stray"`) {
		t.Errorf("stray argument: exit %d, %q", code, errOut)
	}
	out, _, code := run(t, "node", "-h")
	if code != 0 || !strings.Contains(out, "unix://<kubelet-dir>/plugins/<driver-name>/csi.sock") || !strings.Contains(out, "default: --kubelet-dir") {
		t.Errorf("plinth node -h: exit %d, the node's endpoint and allowed-path defaults missing:\n%s", code, out)
	}
	out, _, code = run(t, "standalone", "--help")
	if code != 0 || !strings.Contains(out, "unix://<root>/csi.sock") || !strings.Contains(out, "--disk-config") && !strings.Contains(out, "-disk-config") {
		t.Errorf("plinth standalone --help: exit %d:\n%s", code, out)
	}
}

// A bad value in a configuration file is reported with the file and the
// field, also for the values checked only after the file is read (the
// logging format, the root).
func TestConfigFileErrorsNameTheField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: plinth.example.com/v1alpha1\nkind: StandaloneConfiguration\nloggingFormat: jsonx\nroot: relative/dir\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := run(t, "standalone", "--config", path)
	if code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, stderr)
	}
	for _, want := range []string{`config file ` + path + `: field "loggingFormat"`, `--root is field "root"`} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q lacks %q", stderr, want)
		}
	}
}

// plinth volume and plinth snapshot are dispatched to the CSI client with
// plinth standalone's default endpoint, which $CSI_ENDPOINT overrides; a
// bad command line exits 2, a failed call 1 (pkg/csiclient tests the
// commands against a real plinth).
func TestVolumeAndSnapshotCommands(t *testing.T) {
	out, _, _ := run(t, "help")
	for _, want := range []string{"plinth volume COMMAND", "plinth snapshot COMMAND"} {
		if !strings.Contains(out, want) {
			t.Errorf("plinth help lacks %q:\n%s", want, out)
		}
	}
	out, _, code := run(t, "volume", "-h")
	if code != 0 || !strings.Contains(out, "plinth volume expand ID --size SIZE") || !strings.Contains(out, "unix:///var/lib/plinth/csi.sock") {
		t.Errorf("plinth volume -h: exit %d:\n%s", code, out)
	}
	if _, errOut, code := run(t, "snapshot", "create", "s"); code != 2 || errOut != "plinth snapshot create: --volume is required\nRun \"plinth snapshot create -h\" for its flags.\n" {
		t.Errorf("snapshot create without --volume: exit %d, %q", code, errOut)
	}
	sock := filepath.Join(t.TempDir(), "none.sock")
	cmd := exec.Command(os.Args[0], "volume", "get", "pv-x")
	cmd.Env = append(os.Environ(), "PLINTH_RUN_MAIN=1", "CSI_ENDPOINT=unix://"+sock)
	b, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.HasPrefix(string(b), "plinth volume get: cannot reach unix://"+sock+" ") {
		t.Errorf("volume get on $CSI_ENDPOINT with nothing there: %v: %s", err, b)
	}
}

// The binaries the Makefile builds say which commit they are, also where
// the Go toolchain stamps no VCS data (-trimpath, a tree without .git):
// `make build`'s own commands (make -n), writing to a temp dir, give
// plinth and kubectl-plinth that print the same version and commit, the
// tree's HEAD (-dirty with changes to tracked files).
func TestVersionStampedByMakefile(t *testing.T) {
	for _, p := range []string{"make", "git", "go"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	git := func(args ...string) (string, error) {
		out, err := exec.Command("git", append([]string{"-C", root}, args...)...).Output()
		return strings.TrimSpace(string(out)), err
	}
	head, err := git("rev-parse", "HEAD")
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	dryRun := exec.Command("make", "-s", "-n", "-C", root, "build", "VERSION=v0.0.0-stamped")
	dryRun.Env = append(os.Environ(), "MAKEFLAGS=")
	script, err := dryRun.Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	// Whether the tree is dirty is read after make read it: a change
	// between the two would be a flake, not a finding.
	_, clean := git("diff", "--quiet", "HEAD")
	want := head
	if clean != nil {
		want += "-dirty"
	}
	bin := t.TempDir()
	var builds []string
	for _, line := range strings.Split(string(script), "\n") {
		if strings.Contains(line, " build ") && strings.Contains(line, " -o bin/") {
			builds = append(builds, strings.Replace(line, " -o bin/", " -o "+bin+"/", 1))
		}
	}
	if len(builds) != 2 {
		t.Fatalf("make -n build: want the two go builds, got:\n%s", script)
	}
	for _, b := range builds {
		cmd := exec.Command("bash", "-c", b)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", b, err, out)
		}
	}
	for _, c := range [][]string{{"plinth", "version"}, {"kubectl-plinth", "--version"}} {
		out, err := exec.Command(filepath.Join(bin, c[0]), c[1:]...).Output()
		if err != nil {
			t.Fatalf("%s %s: %v", c[0], c[1], err)
		}
		lines := strings.SplitN(string(out), "\n", 3)
		if len(lines) < 3 || lines[0] != c[0]+" v0.0.0-stamped" || lines[1] != "commit: "+want {
			t.Errorf("%s %s:\n%s\nwant %q and %q first", c[0], c[1], out, c[0]+" v0.0.0-stamped", "commit: "+want)
		}
	}
}

// What printVersion prints of the stamped version and commit.
func TestPrintVersion(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3", "0123456789abcdef0123456789abcdef01234567-dirty"
	var b bytes.Buffer
	printVersion(&b)
	if !strings.HasPrefix(b.String(), "plinth v1.2.3\ncommit: 0123456789abcdef0123456789abcdef01234567-dirty\ngo: go1.") {
		t.Errorf("printVersion:\n%s", b.String())
	}
}
