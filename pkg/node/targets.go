package node

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/mount"
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
	// Bound is the device node a block publish bound at the target. Its
	// number is handed to the consumer (a container's device node and
	// device-cgroup rule are by major:minor), so it is never given to
	// another volume while this record lives, even if the consumer frees
	// the device itself (LOOP_CLR_FD).
	Bound string `json:"bound,omitempty"`
}

// targetRecords keeps one record per published target in dir, written
// temp → rename before the target is made: a boot record
// (durable.WriteBootRecord), since no mount outlives the boot. With dir "" nothing is
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
	return durable.WriteBootRecord(t.path(r.Target), r)
}

func (t targetRecords) drop(target string) error {
	if t.dir == "" {
		return nil
	}
	return durable.RemoveBootRecord(t.path(target))
}

// of returns the targets volume id is published at.
func (t targetRecords) of(id string) ([]string, error) {
	if t.dir == "" {
		return nil, nil
	}
	files, err := filepath.Glob(filepath.Join(t.dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		var r targetRecord
		if err := pool.ReadRecord(f, &r); err == nil && r.VolumeID == id {
			out = append(out, r.Target)
		}
	}
	return out, nil
}

// stagedOrPublished refuses (pool.ErrInUse) while this node's records say
// volume id is staged or published: its consumer still has it.
func (p *Mounts) stagedOrPublished(id string) error {
	at, err := p.staged.stagedAt(id)
	if err != nil {
		return err
	}
	if at != "" {
		return fmt.Errorf("%w: volume %s is staged at %s: unstage it first", pool.ErrInUse, id, at)
	}
	targets, err := p.targets.of(id)
	if err != nil {
		return err
	}
	if len(targets) > 0 {
		return fmt.Errorf("%w: volume %s is published at %s: unpublish it first", pool.ErrInUse, id, strings.Join(targets, ", "))
	}
	return nil
}

// stagedRecord says where a volume is staged (filesystem volumes), so that
// a publish or unpublish naming that path as its target is refused: the
// staging mount is the volume's, but it is not a publish to undo.
type stagedRecord struct {
	Schema   int    `json:"schema"`
	VolumeID string `json:"volumeID"`
	Path     string `json:"path"`
}

// stagedRecords keeps one record per staged volume in dir ("" records
// nothing), as boot records (durable.WriteBootRecord).
type stagedRecords struct{ dir string }

func (s stagedRecords) path(id string) string { return filepath.Join(s.dir, id+".json") }

// stagedAt returns where volume id is staged, "" when not recorded.
func (s stagedRecords) stagedAt(id string) (string, error) {
	if s.dir == "" {
		return "", nil
	}
	var r stagedRecord
	if err := pool.ReadRecord(s.path(id), &r); err != nil {
		if errors.Is(err, pool.ErrNotFound) {
			return "", nil
		}
		return "", err
	}
	return r.Path, nil
}

func (s stagedRecords) put(id, path string) error {
	if s.dir == "" {
		return nil
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create staged records dir: %w", err)
	}
	return durable.WriteBootRecord(s.path(id), stagedRecord{Schema: pool.SchemaVersion, VolumeID: id, Path: path})
}

func (s stagedRecords) drop(id string) error {
	if s.dir == "" {
		return nil
	}
	return durable.RemoveBootRecord(s.path(id))
}

// all returns every staged record (volume ID → staging path).
func (s stagedRecords) all() (map[string]string, error) {
	out := map[string]string{}
	if s.dir == "" {
		return out, nil
	}
	ids, err := pool.RecordIDs(s.dir)
	if errors.Is(err, os.ErrNotExist) || err != nil && !dirExists(s.dir) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		var r stagedRecord
		if err := pool.ReadRecord(s.path(id), &r); err == nil && r.Path != "" {
			out[id] = r.Path
		}
	}
	return out, nil
}

func dirExists(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}

// DeviceBound reports whether the device node dev (e.g. /dev/loop3) is
// handed to a consumer on this node: named by a publish record under
// stateDir, or bound somewhere (a devtmpfs bind of it in the mount table).
// Such a number must not be given to another volume. It is what a loop
// device allocator asks before it configures a free device.
func DeviceBound(stateDir, dev string) bool { return deviceBound(stateDir, dev, mount.Mounts) }

// deviceBound is DeviceBound reading the mount table with mounts.
func deviceBound(stateDir, dev string, mounts func() ([]mount.Info, error)) bool {
	name := filepath.Base(dev)
	if stateDir != "" {
		files, _ := filepath.Glob(filepath.Join(stateDir, "targets", "*.json"))
		for _, f := range files {
			var r targetRecord
			if err := pool.ReadRecord(f, &r); err == nil && (filepath.Base(r.Bound) == name || filepath.Base(r.Device) == name) {
				return true
			}
		}
	}
	table, err := mounts()
	if err != nil {
		return true // unreadable: be safe
	}
	for _, m := range table {
		if m.BindsDevice(dev) {
			return true
		}
	}
	return false
}
