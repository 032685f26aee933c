package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
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
