package bench

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"github.com/plinth-dev/plinth/test/bench/refdriver"
	"github.com/plinth-dev/plinth/test/testenv"
)

// refdriverEnv makes this test binary serve the host-path stand-in
// (test/bench/refdriver) on "SOCKET|DIR", in a process of its own as
// plinth runs in one.
const refdriverEnv = "PLINTH_BENCH_REFDRIVER"

func TestMain(m *testing.M) {
	testenv.RunChildIfAsked()
	if v := os.Getenv(refdriverEnv); v != "" {
		sock, dir, _ := strings.Cut(v, "|")
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := refdriver.Run(ctx, sock, dir); err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
