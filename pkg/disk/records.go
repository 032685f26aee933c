package disk

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/pkg/pool"
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

// ClaimSchema is the version of the claim records.
const ClaimSchema = 1

// Claim is the record of one pool's disks, written before any of them is
// touched and kept as long as the pool is plinth's.
type Claim struct {
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
}

// Member is one claimed disk as it was when claimed.
type Member struct {
	ID        string `json:"id"`
	Name      string `json:"name"` // kernel name at claim time, for people only
	SizeBytes int64  `json:"sizeBytes"`
	Model     string `json:"model,omitempty"`
	Serial    string `json:"serial,omitempty"`
	WWN       string `json:"wwn,omitempty"`
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
		return "", fmt.Errorf("%w: pool name %q", pool.ErrInvalid, poolName)
	}
	return filepath.Join(r.Dir, poolName+".json"), nil
}

// Load reads every claim record (none when Dir does not exist).
func (r Records) Load() ([]Claim, error) {
	entries, err := os.ReadDir(r.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read claim records: %w", err)
	}
	var out []Claim
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !poolNameOK(name) {
			continue // temp files of an interrupted write, and strangers
		}
		b, err := os.ReadFile(filepath.Join(r.Dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read claim record: %w", err)
		}
		var c Claim
		if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("claim record %s: %w", e.Name(), err)
		}
		if c.Schema != ClaimSchema || c.Pool != name {
			return nil, fmt.Errorf("claim record %s: schema %d, pool %q: not one this plinth wrote", e.Name(), c.Schema, c.Pool)
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out, nil
}

// Put writes c durably (temp, fsync, rename, fsync of the directory).
func (r Records) Put(c Claim) error {
	p, err := r.path(c.Pool)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(r.Dir, 0o700); err != nil {
		return fmt.Errorf("claim records: %w", err)
	}
	c.Schema = ClaimSchema
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := pool.WriteFileAtomic(p, b, 0o600); err != nil {
		return fmt.Errorf("write claim record of pool %s: %w", c.Pool, err)
	}
	return nil
}
