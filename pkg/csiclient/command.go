package csiclient

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
	"unicode"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/plinth-dev/plinth/pkg/unixsock"
)

// EndpointEnv names the environment variable that, when set, is the
// default of --endpoint.
const EndpointEnv = "CSI_ENDPOINT"

// Env is what Main takes from its process.
type Env struct {
	Stdout, Stderr io.Writer
	// Getenv reads EndpointEnv (nil: the environment is not read).
	Getenv func(string) string
	// DefaultEndpoint is where plinth standalone serves by default.
	DefaultEndpoint string
}

// Main runs `plinth volume ...` or `plinth snapshot ...` (args start with
// the noun) until it is done, ctx ends or --timeout passes, and returns
// the exit status: 0, 1 when the command failed (the gRPC status as
// "Code: message"), 2 for a bad command line.
func Main(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 {
		fmt.Fprintln(env.Stderr, "plinth: volume or snapshot?")
		return 2
	}
	noun := args[0]
	cmds := commands(noun)
	if len(args) < 2 {
		fmt.Fprint(env.Stderr, nounUsage(noun, cmds, env.DefaultEndpoint))
		return 2
	}
	verb := args[1]
	if slices.Contains([]string{"help", "-h", "-help", "--help"}, verb) {
		fmt.Fprint(env.Stdout, nounUsage(noun, cmds, env.DefaultEndpoint))
		return 0
	}
	i := slices.IndexFunc(cmds, func(c command) bool { return c.verb == verb })
	if i < 0 {
		var verbs []string
		for _, c := range cmds {
			verbs = append(verbs, c.verb)
		}
		fmt.Fprintf(env.Stderr, "plinth %s: unknown command %q (%s)\nRun \"plinth %s -h\" for its commands.\n", noun, verb, strings.Join(verbs, ", "), noun)
		return 2
	}
	name := "plinth " + noun + " " + verb
	endpoint := env.DefaultEndpoint
	if env.Getenv != nil && env.Getenv(EndpointEnv) != "" {
		endpoint = env.Getenv(EndpointEnv)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	run, opts, err := parse(fs, cmds[i], args[2:], endpoint)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(env.Stdout)
		fmt.Fprintf(env.Stdout, "Usage: plinth %s %s\n\n%s\n\nFlags:\n", noun, cmds[i].synopsis, cmds[i].summary)
		fs.PrintDefaults()
		return 0
	case err != nil:
		fmt.Fprintf(env.Stderr, "%s: %v\nRun \"%s -h\" for its flags.\n", name, err, name)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	if err := execute(ctx, opts, run, env.Stdout); err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}

// options are the flags every command takes.
type options struct {
	endpoint string
	timeout  time.Duration
	output   string
}

// call runs a parsed command on a client; what it returns is printed.
type call func(ctx context.Context, c *Client) (any, error)

// command is one `plinth NOUN VERB`.
type command struct {
	verb     string
	args     []string // its positional arguments' names
	synopsis string   // the verb, its arguments and its own flags
	summary  string
	// flags registers the command's own flags on fs; the function it
	// returns takes the positional arguments after parsing and gives the
	// call, or what is wrong with the command line.
	flags func(fs *flag.FlagSet) func(args []string) (call, error)
}

// parse reads the command line (flags before, between or after the
// positional arguments) into the call to make and the common options.
func parse(fs *flag.FlagSet, cmd command, args []string, endpoint string) (call, options, error) {
	fs.SetOutput(io.Discard)
	opts := options{}
	fs.StringVar(&opts.endpoint, "endpoint", endpoint, "CSI endpoint of plinth standalone, unix://PATH; $"+EndpointEnv+", when set, is the default")
	fs.DurationVar(&opts.timeout, "timeout", 30*time.Second, "give up after this long (the whole command, every page of a list included)")
	fs.StringVar(&opts.output, "o", "table", "output: table (aligned columns, sizes in KiB/MiB/GiB) or json (see docs/cli.md)")
	build := cmd.flags(fs)
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return nil, opts, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos, rest = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	switch {
	case len(pos) < len(cmd.args):
		return nil, opts, fmt.Errorf("missing %s", strings.Join(cmd.args[len(pos):], " "))
	case len(pos) > len(cmd.args):
		return nil, opts, fmt.Errorf("unexpected argument %q", pos[len(cmd.args)])
	case opts.output != "table" && opts.output != "json":
		return nil, opts, fmt.Errorf("-o %q: want table or json", opts.output)
	case opts.timeout <= 0:
		return nil, opts, fmt.Errorf("--timeout must be positive")
	}
	if _, err := unixsock.ParseEndpoint(opts.endpoint); err != nil {
		return nil, opts, fmt.Errorf("--endpoint: %w", err)
	}
	run, err := build(pos)
	return run, opts, err
}

// execute connects, makes the call and prints its result.
func execute(ctx context.Context, opts options, run call, w io.Writer) error {
	c, err := Dial(ctx, opts.endpoint)
	if err != nil {
		return err
	}
	defer c.Close()
	v, err := run(ctx, c)
	if err != nil {
		return err
	}
	return write(w, opts.output, v)
}

// result lets a typed client method be a call's return.
func result[T any](v T, err error) (any, error) { return v, err }

// Deleted is what a delete prints.
type Deleted struct {
	Kind    string `json:"kind"`
	ID      string `json:"id"`
	Deleted bool   `json:"deleted"`
	// NotFound: it did not exist, and nothing was deleted
	// (--ignore-not-found; without it that is an error).
	NotFound bool `json:"notFound,omitempty"`
}

// deleteCommand is `plinth KIND delete ID [--ignore-not-found]`: del
// fails with codes.NotFound where there was nothing to delete, which is
// an error (exit 1, as kubectl delete) unless --ignore-not-found.
func deleteCommand(kind string, del func(c *Client, ctx context.Context, id string) error) command {
	return command{
		verb: "delete", args: []string{"ID"}, synopsis: "delete ID [--ignore-not-found]",
		summary: "Deletes a " + kind + ". One that does not exist is an error (NotFound, exit 1), or with --ignore-not-found a line saying so (exit 0).",
		flags: func(fs *flag.FlagSet) func([]string) (call, error) {
			ignore := fs.Bool("ignore-not-found", false, "a "+kind+" that does not exist is not an error: say so and exit 0")
			return func(args []string) (call, error) {
				return func(ctx context.Context, c *Client) (any, error) {
					switch err := del(c, ctx, args[0]); {
					case status.Code(err) == codes.NotFound && *ignore:
						return Deleted{Kind: kind, ID: args[0], NotFound: true}, nil
					case status.Code(err) == codes.NotFound:
						return nil, fmt.Errorf("%w (--ignore-not-found: exit 0)", err)
					case err != nil:
						return nil, err
					}
					return Deleted{Kind: kind, ID: args[0], Deleted: true}, nil
				}, nil
			}
		},
	}
}

// commands are the noun's verbs.
func commands(noun string) []command {
	switch noun {
	case "volume":
		return volumeCommands()
	case "snapshot":
		return snapshotCommands()
	}
	return nil
}

func volumeCommands() []command {
	return []command{{
		verb: "create", args: []string{"NAME"},
		synopsis: "create NAME --size SIZE [--block | --fs-type TYPE] [--param KEY=VALUE]... [--access-mode MODE] [--from-snapshot ID | --from-volume ID]",
		summary:  "Creates a volume and prints it. The same NAME again returns the same volume (CSI's idempotent create).",
		flags: func(fs *flag.FlagSet) func([]string) (call, error) {
			r := VolumeRequest{AccessMode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}
			var size sizeFlag
			fs.Var(&size, "size", "capacity (required), a Kubernetes quantity with a unit: 1Gi, 500Mi, 1G (a bare number is refused); plinth rounds it up to whole MiB and its filesystem's minimum")
			fs.BoolVar(&r.Block, "block", false, "a raw block volume (default: a filesystem volume)")
			fs.StringVar(&r.FsType, "fs-type", "", "the filesystem: ext4, xfs or btrfs (default: the pool's)")
			fs.Var(paramFlag{&r.Parameters}, "param", "a parameter KEY=VALUE, repeatable: pool=NAME, backend=file|btrfs|disk, provisioning=thin|thick (docs/configuration.md)")
			fs.Var(accessModeFlag{&r.AccessMode}, "access-mode", "access mode: "+strings.Join(accessModes(), ", ")+" (plinth serves the single-node ones)")
			fs.StringVar(&r.FromSnapshot, "from-snapshot", "", "restore this snapshot into the new volume")
			fs.StringVar(&r.FromVolume, "from-volume", "", "clone this volume into the new volume")
			return func(args []string) (call, error) {
				switch {
				case !size.set:
					return nil, errors.New("--size is required")
				case r.Block && r.FsType != "":
					return nil, errors.New("--fs-type is for filesystem volumes, not --block")
				case r.FromSnapshot != "" && r.FromVolume != "":
					return nil, errors.New("--from-snapshot and --from-volume: give one source at most")
				}
				r.Name, r.SizeBytes = args[0], size.bytes
				return func(ctx context.Context, c *Client) (any, error) { return result(c.CreateVolume(ctx, r)) }, nil
			}
		},
	}, {
		verb: "list", synopsis: "list", summary: "Lists every volume (all pages of ListVolumes).",
		flags: noFlags(func(ctx context.Context, c *Client, _ []string) (any, error) { return result(c.ListVolumes(ctx)) }),
	}, {
		verb: "get", args: []string{"ID"}, synopsis: "get ID", summary: "Prints one volume (ControllerGetVolume, or ListVolumes where the plugin has no GET_VOLUME).",
		flags: noFlags(func(ctx context.Context, c *Client, args []string) (any, error) {
			return result(c.GetVolume(ctx, args[0]))
		}),
	}, {
		verb: "expand", args: []string{"ID"}, synopsis: "expand ID --size SIZE",
		summary: "Grows a volume to SIZE (never shrinks it). A filesystem volume's filesystem grows on the node when the CO calls NodeExpandVolume or stages it again.",
		flags: func(fs *flag.FlagSet) func([]string) (call, error) {
			var size sizeFlag
			fs.Var(&size, "size", "the new capacity (required), a Kubernetes quantity with a unit: 2Gi, 1500Mi, 2G (a bare number is refused)")
			return func(args []string) (call, error) {
				if !size.set {
					return nil, errors.New("--size is required")
				}
				return func(ctx context.Context, c *Client) (any, error) {
					return result(c.ExpandVolume(ctx, args[0], size.bytes))
				}, nil
			}
		},
	}, deleteCommand("volume", (*Client).DeleteVolume)}
}

func snapshotCommands() []command {
	return []command{{
		verb: "create", args: []string{"NAME"}, synopsis: "create NAME --volume ID",
		summary: "Snapshots a volume and prints the snapshot. The same NAME again returns the same snapshot.",
		flags: func(fs *flag.FlagSet) func([]string) (call, error) {
			volume := fs.String("volume", "", "the volume to snapshot (required)")
			return func(args []string) (call, error) {
				if *volume == "" {
					return nil, errors.New("--volume is required")
				}
				return func(ctx context.Context, c *Client) (any, error) {
					return result(c.CreateSnapshot(ctx, args[0], *volume))
				}, nil
			}
		},
	}, {
		verb: "list", synopsis: "list [--volume ID]", summary: "Lists every snapshot, or one volume's (all pages of ListSnapshots).",
		flags: func(fs *flag.FlagSet) func([]string) (call, error) {
			volume := fs.String("volume", "", "only this volume's snapshots")
			return func([]string) (call, error) {
				return func(ctx context.Context, c *Client) (any, error) { return result(c.ListSnapshots(ctx, *volume)) }, nil
			}
		},
	}, deleteCommand("snapshot", (*Client).DeleteSnapshot)}
}

// noFlags is a command with only the common flags.
func noFlags(f func(ctx context.Context, c *Client, args []string) (any, error)) func(*flag.FlagSet) func([]string) (call, error) {
	return func(*flag.FlagSet) func([]string) (call, error) {
		return func(args []string) (call, error) {
			return func(ctx context.Context, c *Client) (any, error) { return f(ctx, c, args) }, nil
		}
	}
}

// nounUsage is `plinth volume -h`.
func nounUsage(noun string, cmds []command, defaultEndpoint string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage:\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "  plinth %s %s\n", noun, c.synopsis)
	}
	fmt.Fprintf(&b, "\nEvery command takes --endpoint unix://PATH (default: $%s if set, else plinth standalone's\n"+
		"default %s), --timeout DURATION (default 30s) and -o table|json.\n"+
		"Run \"plinth %s <command> -h\" for its flags.\n", EndpointEnv, defaultEndpoint, noun)
	return b.String()
}

// sizeFlag is a capacity given as a Kubernetes quantity with a unit.
type sizeFlag struct {
	bytes int64
	set   bool
}

// sizeUnits are the suffixes a size must end in: a bare number (or one
// with an exponent, 1e9) is bytes, and --size 10 asked for 8 MiB.
var sizeUnits = []string{"Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"}

func (s *sizeFlag) String() string { return "" }

func (s *sizeFlag) Set(v string) error {
	q, err := resource.ParseQuantity(v)
	switch {
	case err != nil:
		return errors.New("not a size: want a quantity such as 1Gi, 500Mi or 1G")
	case q.Sign() <= 0:
		return errors.New("a size must be more than 0")
	case unit(v) == "":
		return fmt.Errorf("%s has no unit (a bare number would be bytes): give one, as in --size %s (%s)", v, example(v), strings.Join(sizeUnits, ", "))
	case !slices.Contains(sizeUnits, unit(v)):
		return fmt.Errorf("%q is not a unit of bytes: give one of %s, as in --size %s", unit(v), strings.Join(sizeUnits, ", "), example(v))
	case q.CmpInt64(math.MaxInt64) > 0:
		return errors.New("too large")
	}
	s.bytes, s.set = q.Value(), true
	return nil
}

// unit is the suffix of quantity v: the letters it ends with.
func unit(v string) string {
	return v[len(strings.TrimRightFunc(v, unicode.IsLetter)):]
}

// example is v's number in GiB (10 is 10Gi), or 10Gi where v's number is
// not plain (1e9).
func example(v string) string {
	n := strings.TrimSuffix(v, unit(v))
	if n == "" || strings.Trim(n, "0123456789.") != "" {
		n = "10"
	}
	return n + "Gi"
}

// paramFlag collects KEY=VALUE parameters.
type paramFlag struct{ m *map[string]string }

func (p paramFlag) String() string { return "" }

func (p paramFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return errors.New("want KEY=VALUE")
	}
	if *p.m == nil {
		*p.m = map[string]string{}
	}
	if _, dup := (*p.m)[k]; dup {
		return fmt.Errorf("parameter %s given twice", k)
	}
	(*p.m)[k] = val
	return nil
}

// accessModeFlag is a CSI access mode spelt in lower case with dashes:
// SINGLE_NODE_WRITER is single-node-writer.
type accessModeFlag struct {
	m *csi.VolumeCapability_AccessMode_Mode
}

func flagName(m csi.VolumeCapability_AccessMode_Mode) string {
	return strings.ReplaceAll(strings.ToLower(m.String()), "_", "-")
}

// accessModes are the modes' flag names in the spec's order.
func accessModes() []string {
	var modes []int32
	for n := range csi.VolumeCapability_AccessMode_Mode_name {
		if n != 0 {
			modes = append(modes, n)
		}
	}
	slices.Sort(modes)
	var out []string
	for _, n := range modes {
		out = append(out, flagName(csi.VolumeCapability_AccessMode_Mode(n)))
	}
	return out
}

func (a accessModeFlag) String() string {
	if a.m == nil {
		return ""
	}
	return flagName(*a.m)
}

func (a accessModeFlag) Set(v string) error {
	n, ok := csi.VolumeCapability_AccessMode_Mode_value[strings.ToUpper(strings.ReplaceAll(v, "-", "_"))]
	if !ok || n == 0 {
		return fmt.Errorf("want one of %s", strings.Join(accessModes(), ", "))
	}
	*a.m = csi.VolumeCapability_AccessMode_Mode(n)
	return nil
}
