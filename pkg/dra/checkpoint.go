package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// checkpointVersion is the format of the checkpoint file; a file of
// another version is refused rather than guessed at.
const checkpointVersion = 1

// PreparedDevice is one device a claim was prepared with.
type PreparedDevice struct {
	// Requests are the claim's request names the device was allocated for.
	Requests []string `json:"requests"`
	Pool     string   `json:"pool"`
	Device   string   `json:"device"`
	// Resource is the DeviceConfig resource the device belonged to.
	Resource string `json:"resource"`
	// ID is plinth's device ID (the PCI address).
	ID     string   `json:"id"`
	CDIIDs []string `json:"cdiIDs"`
	// AdminAccess: prepared for a claim with admin access, which does not
	// hold the device against other claims.
	AdminAccess bool `json:"adminAccess,omitempty"`
}

// PreparedClaim is what Prepare did for one claim, kept until Unprepare.
type PreparedClaim struct {
	Namespace string           `json:"namespace"`
	Name      string           `json:"name"`
	Devices   []PreparedDevice `json:"devices"`
}

type checkpointFile struct {
	Version int                         `json:"version"`
	Claims  map[types.UID]PreparedClaim `json:"claims"`
}

// checkpoint keeps the prepared claims in one file, rewritten whole
// (temp → fsync → rename) on every change.
type checkpoint struct{ path string }

func (c checkpoint) load() (map[types.UID]PreparedClaim, error) {
	b, err := os.ReadFile(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[types.UID]PreparedClaim{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read DRA checkpoint: %w", err)
	}
	var f checkpointFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("DRA checkpoint %s: %w", c.path, err)
	}
	if f.Version != checkpointVersion {
		return nil, fmt.Errorf("DRA checkpoint %s: version %d, this plinth reads %d", c.path, f.Version, checkpointVersion)
	}
	if f.Claims == nil {
		f.Claims = map[types.UID]PreparedClaim{}
	}
	return f.Claims, nil
}

func (c checkpoint) save(claims map[types.UID]PreparedClaim) error {
	b, err := json.MarshalIndent(checkpointFile{Version: checkpointVersion, Claims: claims}, "", " ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("DRA checkpoint directory: %w", err)
	}
	return durable.WriteFile(c.path, b, 0o600)
}
