package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/plinth-dev/plinth/pkg/buildinfo"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/pkg/inspect"
)

// version and commit are set at build time, as plinth's: -ldflags
// "-X main.version=... -X main.commit=..." (the Makefile's build).
var (
	version = "dev"
	commit  string
)

const usage = `kubectl plinth: plinth's view of the cluster.

Usage:
  kubectl plinth status                 the installation: controller replicas and leader, each node's
                                        version and state, mixed versions, what needs attention
                                        (exit status 3 when something does)
  kubectl plinth nodes                  pools (size, allocatable, volumes) and devices (health) per node
  kubectl plinth volumes                every volume: claim, node, pool, capacity, used, phase, pods using it
  kubectl plinth devices                devices per node and resource, and the pods holding them
  kubectl plinth disks                  every node's disks: identity, size, transport, NUMA node, free/plinth/foreign/missing, pool
  kubectl plinth why pvc|pod NAME       why a PVC or a pod is (not) pending, in plinth's terms
  kubectl plinth move PVC --to NODE     move a bound claim's volume to NODE: copied while its pods run, then
        [--evict] [--wait]              the pods stop (evicted with --evict, PodDisruptionBudgets hold), what
        [--keep-source DURATION]        changed follows, and the claim (same name) is bound on NODE; --wait
                                        follows it to the end (exit status 1 when it fails and rolls back)
  kubectl plinth moves                  the moves of the namespace (-A: of all) and how far each is
  kubectl plinth drain NODE             cordon NODE, move every plinth claim on it whose workload can move
        [--parallel N] [--timeout D]    (N at once, default 2; pods evicted), say which cannot move and why,
                                        then evict its other pods (not DaemonSets' or static pods); exit
                                        status 3 when a claim stays
  kubectl plinth version                its version and commit (also --version)

Flags:
  -o table|json|yaml   output format (default table)
  -n NAMESPACE         namespace for "why", "move" and "moves" (default: the kubeconfig's)
  -A                   "moves" of all namespaces
  --kubeconfig FILE    (default: $KUBECONFIG or ~/.kube/config)
  --driver-name NAME   plinth's CSI driver name (default plinth.example.com)
`

func main() {
	fs := flag.NewFlagSet("kubectl-plinth", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	output := fs.String("o", "table", "output format: table, json or yaml")
	namespace := fs.String("n", "", "namespace")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file")
	driver := fs.String("driver-name", "plinth.example.com", "plinth's CSI driver name")
	showVersion := fs.Bool("version", false, "print the version and commit")
	var mv moveFlags
	fs.StringVar(&mv.to, "to", "", "move: the target node")
	fs.BoolVar(&mv.evict, "evict", false, "move: evict the pods that use the claim at cutover")
	fs.BoolVar(&mv.wait, "wait", false, "move: follow the move until it is done or rolled back")
	fs.DurationVar(&mv.keep, "keep-source", 0, "move: keep the source volume this long after the claim is bound on the target")
	fs.BoolVar(&mv.all, "A", false, "moves: of all namespaces")
	fs.IntVar(&mv.parallel, "parallel", 2, "drain: moves at once")
	fs.DurationVar(&mv.timeout, "timeout", time.Hour, "drain: how long it may take")
	// Flags may come before or after the command.
	var args []string
	rest := os.Args[1:]
	for len(rest) > 0 {
		switch err := fs.Parse(rest); {
		case errors.Is(err, flag.ErrHelp):
			fmt.Print(usage)
			os.Exit(0)
		case err != nil:
			fmt.Fprintf(os.Stderr, "kubectl plinth: %v\nRun \"kubectl plinth --help\" for its commands and flags.\n", err)
			os.Exit(2)
		}
		if fs.NArg() == 0 {
			break
		}
		args = append(args, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *showVersion || len(args) > 0 && args[0] == "version" {
		buildinfo.Print(os.Stdout, "kubectl-plinth", version, commit)
		os.Exit(0)
	}
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if args[0] == "help" {
		fmt.Print(usage)
		os.Exit(0)
	}
	// A command that does not exist is reported before any kubeconfig is
	// read (a missing kubeconfig must not hide a typo).
	if !slices.Contains(commands, args[0]) {
		fmt.Fprintf(os.Stderr, "kubectl plinth: unknown command %q (%s)\nRun \"kubectl plinth --help\" for its commands and flags.\n", args[0], strings.Join(commands, ", "))
		os.Exit(2)
	}
	if args[0] == "drain" && len(args) != 2 {
		fmt.Fprintln(os.Stderr, "kubectl plinth: drain NODE [--parallel N] [--timeout DURATION] [--keep-source DURATION]")
		os.Exit(2)
	}
	if args[0] == "move" && (len(args) != 2 || mv.to == "") {
		fmt.Fprintln(os.Stderr, "kubectl plinth: move PVC --to NODE [--evict] [--wait] [--keep-source DURATION]")
		os.Exit(2)
	}
	attention, err := run(args, *output, *namespace, *kubeconfig, *driver, mv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubectl plinth:", err)
		os.Exit(1)
	}
	if attention {
		os.Exit(exitAttention)
	}
}

// commands are kubectl plinth's commands.
var commands = []string{"status", "nodes", "volumes", "devices", "disks", "why", "move", "moves", "drain"}

// moveFlags are the flags of move and moves.
type moveFlags struct {
	to            string
	evict, wait   bool
	all           bool
	keep, timeout time.Duration
	parallel      int
}

// exitAttention is the exit status of `status` when something needs
// attention (1 is an error, 2 a bad command line).
const exitAttention = 3

// run runs the command in args and prints its answer; attention is true
// when `status` found something that needs attention.
func run(args []string, output, namespace, kubeconfig, driver string, mv moveFlags) (attention bool, err error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return false, err
	}
	if namespace == "" {
		if namespace, _, err = cc.Namespace(); err != nil {
			return false, err
		}
	}
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return false, err
	}
	plinth, err := versioned.NewForConfig(cfg)
	if err != nil {
		return false, err
	}
	c := &inspect.Client{Core: core, Plinth: plinth, Driver: driver}
	if args[0] == "move" {
		return false, move(c, args[1], namespace, output, mv)
	}
	if args[0] == "drain" {
		rep, err := c.Drain(context.Background(), inspect.DrainRequest{Node: args[1], Parallel: mv.parallel, Timeout: mv.timeout, KeepSourceFor: mv.keep},
			func(line string) {
				if output == "" || output == "table" {
					fmt.Println(line)
				}
			})
		if perr := inspect.Print(os.Stdout, output, rep); perr != nil && err == nil {
			err = perr
		}
		return len(rep.CannotMove)+len(rep.Failed) > 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var v any
	switch args[0] {
	case "status":
		var st inspect.StatusReport
		st, err = c.Status(ctx)
		v, attention = st, !st.Healthy()
	case "nodes":
		v, err = c.Nodes(ctx)
	case "volumes":
		v, err = c.Volumes(ctx)
	case "devices":
		v, err = c.Devices(ctx)
	case "disks":
		v, err = c.Disks(ctx)
	case "moves":
		if mv.all {
			namespace = ""
		}
		v, err = c.Moves(ctx, namespace)
	case "why":
		if len(args) != 3 {
			return false, fmt.Errorf("why pvc NAME | why pod NAME")
		}
		name := args[2]
		if ns, n, ok := strings.Cut(name, "/"); ok {
			namespace, name = ns, n
		}
		switch args[1] {
		case "pvc", "persistentvolumeclaim":
			v, err = c.WhyPVC(ctx, namespace, name)
		case "pod":
			v, err = c.WhyPod(ctx, namespace, name)
		default:
			return false, fmt.Errorf("why %s: explain a pvc or a pod", args[1])
		}
	default:
		return false, fmt.Errorf("unknown command %q (status, nodes, volumes, devices, disks, why)", args[0])
	}
	if err != nil {
		return false, err
	}
	return attention, inspect.Print(os.Stdout, output, v)
}

// move starts a move of claim (NAMESPACE/NAME or NAME) and, with --wait,
// follows it to its end.
func move(c *inspect.Client, claim, namespace, output string, mv moveFlags) error {
	if ns, n, ok := strings.Cut(claim, "/"); ok {
		namespace, claim = ns, n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	r, err := c.Move(ctx, inspect.MoveRequest{Namespace: namespace, Claim: claim, To: mv.to, Evict: mv.evict, KeepSourceFor: mv.keep})
	cancel()
	if err != nil {
		return err
	}
	if !mv.wait {
		return inspect.Print(os.Stdout, output, r)
	}
	last, err := c.WatchMove(context.Background(), r.Namespace, r.Name, func(r inspect.MoveReport) {
		if output == "" || output == "table" {
			fmt.Println(r.Line())
		}
	})
	if err != nil {
		return err
	}
	if output != "" && output != "table" {
		if err := inspect.Print(os.Stdout, output, last); err != nil {
			return err
		}
	}
	if last.Phase == "Failed" {
		return fmt.Errorf("the move of %s/%s failed: %s", r.Namespace, r.Claim, last.Message)
	}
	return nil
}
