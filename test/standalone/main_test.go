package standalone

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// childEnv makes the test binary act as `plinth standalone` (same code as
// cmd/plinth), so that tests can SIGKILL a real plinth process.
const childEnv = "PLINTH_TEST_STANDALONE"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "" {
		os.Exit(m.Run())
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

// volumeIDFunc is plinth's derivation of a volume ID from its name.
var volumeIDFunc = volume.VolumeID
