package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// runAll runs every part until ctx ends or one fails (which stops the rest).
func runAll(ctx context.Context, parts map[string]func(context.Context) error) error {
	g := newGroup(ctx)
	g.goAll(parts)
	return g.wait()
}

// group runs parts until its context ends or one fails (which stops the
// rest); parts may join while others run (a node that serves DRA while it
// waits for its root starts the rest once it holds it).
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

func newGroup(ctx context.Context) *group {
	ctx, cancel := context.WithCancel(ctx)
	return &group{ctx: ctx, cancel: cancel}
}

// goAll starts every part of parts.
func (g *group) goAll(parts map[string]func(context.Context) error) {
	for name, f := range parts {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := f(g.ctx); err != nil {
				g.mu.Lock()
				g.errs = append(g.errs, fmt.Errorf("%s: %w", name, err))
				g.mu.Unlock()
				g.cancel()
			}
		}()
	}
}

// wait waits for every part to return, and says which failed.
func (g *group) wait() error {
	g.wg.Wait()
	g.cancel()
	g.mu.Lock()
	defer g.mu.Unlock()
	return errors.Join(g.errs...)
}

// stop stops the parts that run and waits for them; err is why (it comes
// first in what stop returns).
func (g *group) stop(err error) error {
	g.cancel()
	return errors.Join(err, g.wait())
}
