package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"

	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/pkg/buildinfo"
	"github.com/plinth-dev/plinth/pkg/csiclient"
)

// version and commit are set at build time: -ldflags "-X main.version=...
// -X main.commit=..." (the Makefile's build); commit "" is the Go
// toolchain's VCS stamp, where it made one.
var (
	version = "dev"
	commit  string
)

const usage = `plinth: node-local disks as CSI volumes, accelerators as extended resources.

Usage:
  plinth standalone [flags]   controller and node in one process, no Kubernetes
  plinth controller [flags]   provisions PVCs, publishes capacity, expands volumes (in the cluster)
  plinth node [flags]         a node's CSI Node service, its volume objects and device plugins (--csi=false: devices only)
  plinth volume COMMAND       create, list, get, expand, delete volumes over a plinth standalone's CSI socket
  plinth snapshot COMMAND     create, list, delete its snapshots (no Kubernetes needed; see docs/cli.md)
  plinth probe --socket PATH /readyz|/healthz
                              ask a node's health socket (an exec probe); exit 0 when it is ready/live
  plinth version              print the version, commit, Go and the API versions plinth speaks
  plinth help                 print this

Run "plinth <command> -h" for its flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "help", "-h", "-help", "--help":
		fmt.Print(usage)
	case "version", "-version", "--version":
		printVersion(os.Stdout)
	case "standalone":
		cfg := app.StandaloneConfig{Version: version}
		command("standalone", app.StandaloneConfigKind, cfg.Flags, func(in app.Inline) { cfg.DiskConfigData = in.Disks }, cfg.Validate, func(ctx context.Context) error { return app.RunStandalone(ctx, cfg) })
	case "volume", "snapshot":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := csiclient.Main(ctx, os.Args[1:], csiclient.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv,
			DefaultEndpoint: "unix://" + filepath.Join(app.DefaultRoot, "csi.sock")})
		stop()
		os.Exit(code)
	case "probe":
		os.Exit(probe(os.Args[2:]))
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

// probe is `plinth probe --socket PATH /readyz|/healthz`: 0 when the
// health server on the socket says ok, 1 (with why) when it does not, 2
// for a bad command line.
func probe(args []string) int {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", "", "unix socket of plinth node's --health-socket")
	if err := fs.Parse(args); err != nil || *socket == "" || fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: plinth probe --socket PATH /readyz|/healthz")
		return 2
	}
	if err := app.Probe(context.Background(), *socket, fs.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ok")
	return 0
}

// command parses a subcommand's flags (its own and the logging flags) and
// its --config file (kind; the command line overrides it; deviceConfig, when
// set, hears an inline DeviceConfig), validates them (exit 2 naming what is
// wrong) and runs it until a signal.
func command(name, kind string, flags func(*flag.FlagSet), inline func(app.Inline), validate func() error, run func(context.Context) error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	logs := logFlags(fs)
	flags(fs)
	configFile := fs.String("config", "", "configuration file (apiVersion "+app.ConfigAPIVersion+", kind "+kind+"); flags given on the command line override it")
	// A bad flag is one line and a pointer to -h, not every flag's usage.
	fs.SetOutput(io.Discard)
	switch err := fs.Parse(os.Args[2:]); {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(os.Stdout)
		fmt.Printf("Usage: plinth %s [flags]\n\nFlags:\n", name)
		fs.PrintDefaults()
		os.Exit(0)
	case err != nil:
		fmt.Fprintf(os.Stderr, "plinth %s: %v\nRun \"plinth %s -h\" for its flags.\n", name, err, name)
		os.Exit(2)
	case fs.NArg() > 0:
		fmt.Fprintf(os.Stderr, "plinth %s: unexpected argument %q\nRun \"plinth %s -h\" for its flags.\n", name, fs.Arg(0), name)
		os.Exit(2)
	}
	var in app.Inline
	if *configFile != "" {
		var err error
		in, err = app.ApplyConfigFile(fs, *configFile, kind)
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
	// The logging format is checked only here: name the file's field.
	logErr := in.FieldError(*configFile, "logging-format", logsapi.ValidateAndApply(logs, nil))
	if err := errors.Join(logErr, in.Explain(*configFile, validate())); err != nil {
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

// printVersion prints plinth's version and commit, the Go it was built
// with, and the versions of the APIs it speaks (from the modules it was
// built with).
func printVersion(w io.Writer) {
	mods := map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			mods[d.Path] = d.Version
		}
	}
	or := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	buildinfo.Print(w, "plinth", version, commit)
	fmt.Fprintf(w, "CSI spec: %s\n", or(mods["github.com/container-storage-interface/spec"]))
	fmt.Fprintf(w, "device plugin API: v1beta1 (k8s.io/kubelet %s)\n", or(mods["k8s.io/kubelet"]))
	fmt.Fprintf(w, "plugin registration API: v1\n")
	fmt.Fprintf(w, "configuration and custom resources: %s\n", app.ConfigAPIVersion)
}
