package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/app"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

const usage = `plinth: node-local disks as CSI volumes, accelerators as extended resources.

Usage:
  plinth standalone [flags]   controller and node in one process, no Kubernetes
  plinth controller [flags]   provisions PVCs, publishes capacity, expands volumes (in the cluster)
  plinth node [flags]         a node's CSI Node service, its volume objects and device plugins (--csi=false: devices only)
  plinth version              print the version

Run "plinth <command> -h" for its flags.
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
		cfg := app.StandaloneConfig{Version: version}
		command("standalone", app.StandaloneConfigKind, cfg.Flags, func(in app.Inline) { cfg.DiskConfigData = in.Disks }, cfg.Validate, func(ctx context.Context) error { return app.RunStandalone(ctx, cfg) })
	case "controller":
		cfg := app.ControllerConfig{Version: version}
		command("controller", app.ControllerConfigKind, cfg.Flags, nil, cfg.Validate, func(ctx context.Context) error { return app.RunController(ctx, cfg) })
	case "node":
		cfg := app.NodeConfig{Version: version}
		command("node", app.NodeConfigKind, cfg.Flags, func(in app.Inline) { cfg.DeviceConfigData, cfg.DiskConfigData = in.DeviceConfig, in.Disks }, cfg.Validate,
			func(ctx context.Context) error { return app.RunNode(ctx, cfg) })
	default:
		fmt.Fprintf(os.Stderr, "plinth: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}

// command parses a subcommand's flags (its own and the logging flags) and
// its --config file (kind; the command line overrides it; deviceConfig, when
// set, hears an inline DeviceConfig), validates them (exit 2 naming what is
// wrong) and runs it until a signal.
func command(name, kind string, flags func(*flag.FlagSet), inline func(app.Inline), validate func() error, run func(context.Context) error) {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	logs := logFlags(fs)
	flags(fs)
	configFile := fs.String("config", "", "configuration file (apiVersion "+app.ConfigAPIVersion+", kind "+kind+"); flags given on the command line override it")
	_ = fs.Parse(os.Args[2:])
	if *configFile != "" {
		in, err := app.ApplyConfigFile(fs, *configFile, kind)
		if err != nil {
			fmt.Fprintf(os.Stderr, "plinth %s: %v\n", name, err)
			os.Exit(2)
		}
		if in.DeviceConfig != nil && kind != app.NodeConfigKind {
			fmt.Fprintf(os.Stderr, "plinth %s: config file %s: field \"deviceConfig\": unknown field\n", name, *configFile)
			os.Exit(2)
		}
		if inline != nil {
			inline(in)
		}
	}
	if err := errors.Join(logsapi.ValidateAndApply(logs, nil), validate()); err != nil {
		fmt.Fprintf(os.Stderr, "plinth %s: %v\n", name, err)
		os.Exit(2)
	}
	runUntilSignal(run)
}

// logFlags registers the Kubernetes logging flags (-v, --vmodule,
// --logging-format=text|json, ...) on fs.
func logFlags(fs *flag.FlagSet) *logsapi.LoggingConfiguration {
	c := logsapi.NewLoggingConfiguration()
	logsapi.AddGoFlags(c, fs)
	return c
}

// runUntilSignal runs f until SIGINT or SIGTERM; an error exits 1.
func runUntilSignal(f func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := f(ctx)
	stop()
	if err != nil {
		klog.ErrorS(err, "plinth failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
