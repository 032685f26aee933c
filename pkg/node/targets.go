package node

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// The node's records of its stages and publishes, each a durable.Format
// with its version in "schema". Version 1 is what v0.1.0 writes (and every
// plinth before it); a record without "schema" would be version 1 too, but
// v0.1.0 writes it always. v0.1.0 refuses a record of another version
// where it reads one record (a stage, publish or unpublish of that volume
// or target fails with the error), but where it scans them all it passes
// over it as if it were not there: its delete's in-use check and its loop
// allocator do not see a newer plinth's records. This plinth refuses there
// too: a newer record it cannot read may be of any volume or device.
var (
	publishRecords = durable.Format{Kind: "publish record", Field: "schema"}
	stageRecords   = durable.Format{Kind: "stage record", Field: "schema"}
)

// readRecord reads one stage or publish record; found is false when there
// is none.
func readRecord(f durable.Format, path string, v any) (found bool, err error) {
	err = f.Read(path, v)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// targetRecord says what one publish made at its target path, so that
// unpublish removes exactly that and nothing a consumer put there itself.
type targetRecord struct {
	// Schema is the record's version (publishRecords).
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
	// PodUID is the pod the volume is published to (the kubelet's
	// csi.storage.k8s.io/pod.uid), whose cgroup is held to the volume's
	// IO limits; empty when the CO did not say.
	PodUID string `json:"podUID,omitempty"`
}

// targetRecords keeps one record per published target in dir, written
// temp → rename before the target is made: a boot record
// (durable.Format.WriteBoot), since no mount outlives the boot. With dir "" nothing is
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
	if found, err := readRecord(publishRecords, t.path(target), &r); !found {
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
	r.Schema = publishRecords.Version()
	return publishRecords.WriteBoot(t.path(r.Target), r)
}

func (t targetRecords) drop(target string) error {
	if t.dir == "" {
		return nil
	}
	if err := publishRecords.Guard(t.path(target)); err != nil {
		return err
	}
	return durable.RemoveBootRecord(t.path(target))
}

// of returns the targets volume id is published at. A newer plinth's
// record is an error: it may be of id.
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
		err := publishRecords.Read(f, &r)
		if errors.Is(err, durable.ErrNewer) {
			return nil, err
		}
		if err == nil && r.VolumeID == id {
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
	return p.publishedAnywhere(id)
}

// publishedAnywhere refuses (pool.ErrInUse) while this node's records say
// volume id is published: a pod has it.
func (p *Mounts) publishedAnywhere(id string) error {
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
	// Schema is the record's version (stageRecords).
	Schema   int    `json:"schema"`
	VolumeID string `json:"volumeID"`
	Path     string `json:"path"`
}

// stagedRecords keeps one record per staged volume in dir ("" records
// nothing), as boot records (durable.Format.WriteBoot).
type stagedRecords struct{ dir string }

func (s stagedRecords) path(id string) string { return filepath.Join(s.dir, id+".json") }

// stagedAt returns where volume id is staged, "" when not recorded.
func (s stagedRecords) stagedAt(id string) (string, error) {
	if s.dir == "" {
		return "", nil
	}
	var r stagedRecord
	if _, err := readRecord(stageRecords, s.path(id), &r); err != nil {
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
	return stageRecords.WriteBoot(s.path(id), stagedRecord{Schema: stageRecords.Version(), VolumeID: id, Path: path})
}

func (s stagedRecords) drop(id string) error {
	if s.dir == "" {
		return nil
	}
	if err := stageRecords.Guard(s.path(id)); err != nil {
		return err
	}
	return durable.RemoveBootRecord(s.path(id))
}

// all returns every staged record (volume ID → staging path). A newer
// plinth's record is an error: where it stages cannot be told.
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
		err := stageRecords.Read(s.path(id), &r)
		if errors.Is(err, durable.ErrNewer) {
			return nil, err
		}
		if err == nil && r.Path != "" {
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
// stateDir (or a newer plinth's publish record is there, which may name
// it), or bound somewhere (a devtmpfs bind of it in the mount table).
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
			err := publishRecords.Read(f, &r)
			if errors.Is(err, durable.ErrNewer) || err == nil && (filepath.Base(r.Bound) == name || filepath.Base(r.Device) == name) {
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
