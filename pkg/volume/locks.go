package volume

import (
	"errors"
	"sync"
)

// ErrLocked: another operation on the same volume or snapshot holds its
// lock (TryAcquire) and is in progress; this one did nothing.
var ErrLocked = errors.New("an operation on this ID is already in progress")

// ErrInProgress: the volume's node has not finished the operation yet; the
// same call again later gets its answer.
var ErrInProgress = errors.New("in progress on the node")

// Locks serialises operations per ID (volume, name or snapshot), never
// across IDs.
type Locks struct {
	mu   sync.Mutex
	held map[string]struct{}
}

// NewLocks returns an empty lock set.
func NewLocks() *Locks { return &Locks{held: map[string]struct{}{}} }

// TryAcquire takes every key or none; it fails with ErrLocked when any is held.
// The returned func releases them.
func (l *Locks) TryAcquire(keys ...string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if _, ok := l.held[k]; ok {
			return nil, ErrLocked
		}
	}
	for _, k := range keys {
		l.held[k] = struct{}{}
	}
	return func() {
		l.mu.Lock()
		for _, k := range keys {
			delete(l.held, k)
		}
		l.mu.Unlock()
	}, nil
}
