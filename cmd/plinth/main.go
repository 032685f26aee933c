// Command plinth gives a Kubernetes node's own hardware to its pods.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/app"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

const usage = `plinth: node-local disks as CSI volumes, accelerators as extended resources.

Usage:
  plinth standalone [flags]   controller and node in one process, no Kubernetes
  plinth version              print the version

Run "plinth standalone -h" for its flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "version":
		fmt.Println(version)
	case "standalone":
		fs := flag.NewFlagSet("standalone", flag.ExitOnError)
		klog.InitFlags(fs)
		cfg := app.StandaloneConfig{Version: version}
		cfg.Flags(fs)
		_ = fs.Parse(os.Args[2:])
		if err := cfg.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "plinth standalone: %v\n", err)
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := app.RunStandalone(ctx, cfg); err != nil {
			klog.ErrorS(err, "plinth standalone failed")
			klog.Flush()
			os.Exit(1)
		}
		klog.Flush()
	default:
		fmt.Fprintf(os.Stderr, "plinth: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
