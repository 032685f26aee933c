package mount

import (
	"bytes"
	"context"
	"fmt"
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
