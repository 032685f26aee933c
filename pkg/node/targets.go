package node

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// targetRecord says what one publish made at its target path, so that
// unpublish removes exactly that and nothing a consumer put there itself.
type targetRecord struct {
	Schema   int    `json:"schema"`
	VolumeID string `json:"volumeID"`
	Target   string `json:"target"`
	// Created is "dir" or "file" when publish made the target, "" when it
	// was there already.
	Created string `json:"created,omitempty"`
	// Device is a read-only device made for this target (a read-only
	// publish of a block volume), released on unpublish.
	Device string `json:"device,omitempty"`
}

// targetRecords keeps one record per published target in dir, written
// temp → fsync → rename before the target is made. With dir "" nothing is
// recorded and unpublish removes nothing.
type targetRecords struct{ dir string }

func (t targetRecords) path(target string) string {
	sum := sha256.Sum256([]byte(target))
	return filepath.Join(t.dir, hex.EncodeToString(sum[:])+".json")
}

// get returns the record of target, if any.
func (t targetRecords) get(target string) (targetRecord, bool, error) {
	if t.dir == "" {
		return targetRecord{}, false, nil
	}
	var r targetRecord
	if err := pool.ReadRecord(t.path(target), &r); err != nil {
		if errors.Is(err, pool.ErrNotFound) {
			return targetRecord{}, false, nil
		}
		return targetRecord{}, false, err
	}
	if r.Target != target { // a hash collision is not this target's record
		return targetRecord{}, false, nil
	}
	return r, true, nil
}

func (t targetRecords) put(r targetRecord) error {
	if t.dir == "" {
		return nil
	}
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return fmt.Errorf("create target records dir: %w", err)
	}
	r.Schema = pool.SchemaVersion
	return pool.WriteRecord(t.path(r.Target), r)
}

func (t targetRecords) drop(target string) error {
	if t.dir == "" {
		return nil
	}
	return pool.RemoveDurably(t.path(target))
}
