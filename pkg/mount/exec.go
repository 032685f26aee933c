package mount

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"strings"
	"sync"
)

// Runner runs a program with an argument list (never a shell string) and
// returns its combined output.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Exec is the host's Runner. With Launches set it counts every program it
// starts, by name (the zero Exec counts nothing).
type Exec struct {
	Launches *Launches
}

var _ Runner = Exec{}

// Piper runs a program whose standard input or output is a stream (btrfs
// send, btrfs receive).
type Piper interface {
	// Pipe runs name with args under ctx, stdin read from in and stdout
	// written to out (nil: none). The error carries what it said on
	// stderr (its last 4 KiB).
	Pipe(ctx context.Context, in io.Reader, out io.Writer, name string, args ...string) error
}

var _ Piper = Exec{}

// Pipe runs name with its stdin and stdout connected to in and out.
func (e Exec) Pipe(ctx context.Context, in io.Reader, out io.Writer, name string, args ...string) error {
	if e.Launches != nil {
		e.Launches.add(name)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin, cmd.Stdout = in, out
	var msg tail
	cmd.Stderr = &msg
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(msg.b)))
	}
	return nil
}

// tail keeps the last 4 KiB written to it.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

// Run runs name with args under ctx; the error carries the output.
func (e Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if e.Launches != nil {
		e.Launches.add(name)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// Launches counts the programs a Runner started, per program name; safe
// for concurrent use. What it counts is what a request cost in processes:
// the hot path (stage, publish and their inverses) should launch none but
// mkfs for a new volume.
type Launches struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (l *Launches) add(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = map[string]uint64{}
	}
	l.n[name]++
}

// Counts returns how many times each program was started so far.
func (l *Launches) Counts() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.n)
}
