package testenv

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/app"
)

// childEnv makes a test binary act as `plinth standalone` (the same code as
// cmd/plinth), so that tests can SIGKILL and restart a real plinth process.
const childEnv = "PLINTH_TEST_STANDALONE"

// RunChildIfAsked is called first in TestMain: in a child started by
// StartChild it runs plinth standalone and exits.
func RunChildIfAsked() {
	if os.Getenv(childEnv) == "" {
		return
	}
	fs := flag.NewFlagSet("standalone", flag.ExitOnError)
	klog.InitFlags(fs)
	cfg := app.StandaloneConfig{Version: "test"}
	cfg.Flags(fs)
	_ = fs.Parse(os.Args[1:])
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunStandalone(ctx, cfg); err != nil {
		klog.ErrorS(err, "standalone")
		os.Exit(1)
	}
	os.Exit(0)
}

// StartChild starts plinth standalone with args in a child process and
// waits until it serves sock.
func StartChild(t testing.TB, sock string, args []string, logf *os.File) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return cmd
		}
	}
	cmd.Process.Kill()
	t.Fatal("child plinth did not listen")
	return nil
}
