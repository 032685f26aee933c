package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// ClaimState is how far claiming a pool's disks got.
type ClaimState string

const (
	// ClaimFormatting: the record names the disks; their filesystem may be
	// partly made. A restart formats the recorded disks again.
	ClaimFormatting ClaimState = "formatting"
	// ClaimReady: the pool's filesystem (UUID) is made.
	ClaimReady ClaimState = "ready"
)

// ClaimRecords is the format of the claim records, its version in
// "schema". Version 1 is what v0.1.0 writes (and every plinth before it);
// a record without "schema" would be version 1 too, but v0.1.0 writes it
// always. v0.1.0 refuses a record of another version as "not one this
// plinth wrote": that pool is unhealthy with the reason and no disk is
// claimed for any pool while it stays (Plan), so nothing rewrites it.
var ClaimRecords = durable.Format{Kind: "claim record", Field: "schema"}

// Claim is the record of one pool's disks, written before any of them is
// touched and kept as long as the pool is plinth's.
type Claim struct {
	// Schema is the record's version (ClaimRecords).
	Schema int        `json:"schema"`
	Pool   string     `json:"pool"`
	Layout Layout     `json:"layout"`
	Raid   string     `json:"raid,omitempty"`
	FsType string     `json:"fsType,omitempty"`
	State  ClaimState `json:"state"`
	// UUID is the pool filesystem's (file and btrfs layouts).
	UUID      string    `json:"uuid,omitempty"`
	Disks     []Member  `json:"disks"`
	CreatedAt time.Time `json:"createdAt"`
	// Unreadable says why the record file could not be read (it is not
	// a regular file, or not one this plinth wrote); only Pool is known
	// then, and the pool is unhealthy with this reason.
	Unreadable string `json:"-"`
}

// Member is one claimed disk as it was when claimed.
type Member struct {
	ID        string `json:"id"`
	Name      string `json:"name"` // kernel name at claim time, for people only
	SizeBytes int64  `json:"sizeBytes"`
	Model     string `json:"model,omitempty"`
	Serial    string `json:"serial,omitempty"`
	WWN       string `json:"wwn,omitempty"`
	// Wipe: a rule with wipe named the disk, and its signatures are not
	// erased yet (a start that stopped between recording and wiping);
	// the next start erases them before the pool serves.
	Wipe bool `json:"wipe,omitempty"`
	// WipeSaw are the signatures the disk held when the wipe was
	// decided: an owed wipe erases those and nothing written since.
	WipeSaw []string `json:"wipeSaw,omitempty"`
}

func memberOf(d Disk) Member {
	return Member{ID: d.ID, Name: d.Name, SizeBytes: d.SizeBytes, Model: d.Model, Serial: d.Serial, WWN: d.WWN}
}

func (m Member) String() string {
	s := m.ID
	if m.Name != "" {
		s += " (was " + m.Name + ")"
	}
	return s
}

// Records keeps the claim records, one file per pool in Dir.
type Records struct {
	Dir string
}

func (r Records) path(poolName string) (string, error) {
	if !poolNameOK(poolName) {
		return "", fmt.Errorf("invalid argument: pool name %q", poolName)
	}
	return filepath.Join(r.Dir, poolName+".json"), nil
}

// Load reads every claim record (none when Dir does not exist). Dir must
// be a directory, not a symlink to one. A record that is not a regular
// file (a FIFO would block the open for ever, a symlink points anywhere)
// or not one this plinth wrote is returned with only Pool and Unreadable
// set: that pool is unhealthy, the others load.
func (r Records) Load() ([]Claim, error) {
	dirFd, err := r.openDir()
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	dir := os.NewFile(uintptr(dirFd), r.Dir)
	defer dir.Close()
	entries, err := dir.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("read claim records: %w", err)
	}
	var out []Claim
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !poolNameOK(name) {
			continue // temp files of an interrupted write, and strangers
		}
		c, err := readRecord(dirFd, filepath.Join(r.Dir, e.Name()), name)
		if err != nil {
			c = Claim{Pool: name, Unreadable: err.Error()}
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out, nil
}

// openDir opens Dir without following a symlink in its last component.
func (r Records) openDir() (int, error) {
	fd, err := unix.Open(r.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return -1, os.ErrNotExist
	case errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP):
		return -1, fmt.Errorf("claim records: %s is not a directory (a symlink or a file); plinth reads its records only from a directory of its own", r.Dir)
	case err != nil:
		return -1, fmt.Errorf("claim records: open %s: %w", r.Dir, err)
	}
	return fd, nil
}

// readRecord reads one record: opened relative to the directory, without
// following a symlink and without blocking (a FIFO), and only if it is a
// regular file.
func readRecord(dirFd int, path, poolName string) (Claim, error) {
	fd, err := unix.Openat(dirFd, filepath.Base(path), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.ELOOP) {
		return Claim{}, fmt.Errorf("claim record %s is a symlink, not a regular file; plinth does not follow it (remove it, or put the pool's record there)", path)
	}
	if err != nil {
		return Claim{}, fmt.Errorf("open claim record %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Claim{}, fmt.Errorf("claim record %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return Claim{}, fmt.Errorf("claim record %s is not a regular file (%s); plinth does not read it (remove it, or put the pool's record there)", path, fileKind(fi.Mode()))
	}
	// A regular file never blocks; reads go on as usual.
	if err := unix.SetNonblock(fd, false); err != nil {
		return Claim{}, fmt.Errorf("claim record %s: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxRecordBytes+1))
	if err != nil {
		return Claim{}, fmt.Errorf("read claim record %s: %w", path, err)
	}
	if len(b) > maxRecordBytes {
		return Claim{}, fmt.Errorf("claim record %s is over %d bytes: not one this plinth wrote", path, maxRecordBytes)
	}
	var c Claim
	if err := ClaimRecords.Decode(path, b, &c); err != nil {
		return Claim{}, err
	}
	if c.Pool != poolName {
		return Claim{}, fmt.Errorf("claim record %s: pool %q: not one this plinth wrote", path, c.Pool)
	}
	c.Unreadable = ""
	return c, nil
}

// maxRecordBytes bounds a claim record (a few hundred bytes a disk).
const maxRecordBytes = 1 << 20

func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	case m.IsDir():
		return "a directory"
	}
	return m.Type().String()
}

// Put writes c durably (temp, fsync, rename, fsync of the directory).
func (r Records) Put(c Claim) error {
	p, err := r.path(c.Pool)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.Dir), 0o700); err != nil {
		return fmt.Errorf("claim records: %w", err)
	}
	if err := os.Mkdir(r.Dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("claim records: %w", err)
	}
	fd, err := r.openDir()
	if err != nil {
		return err
	}
	unix.Close(fd)
	c.Schema = ClaimRecords.Version()
	if err := ClaimRecords.Write(p, c); err != nil {
		return fmt.Errorf("write claim record of pool %s: %w", c.Pool, err)
	}
	return nil
}

// Drop removes a pool's record durably (the directory is synced); a
// record that is not there is no error.
func (r Records) Drop(poolName string) error {
	p, err := r.path(poolName)
	if err != nil {
		return err
	}
	if err := ClaimRecords.Guard(p); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove claim record of pool %s: %w", poolName, err)
	}
	d, err := os.Open(r.Dir)
	if err != nil {
		return fmt.Errorf("claim records: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("claim records: fsync %s: %w", r.Dir, err)
	}
	return nil
}
