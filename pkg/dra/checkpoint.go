package dra

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// checkpointFormat is the checkpoint file's format, its version in
// "version". Version 1 is what v0.1.0 writes (and every plinth before it);
// a file without "version" would be version 1 too, but v0.1.0 writes it
// always. v0.1.0 refuses a file of any other version: New fails, and so
// plinth node's start, with the file as it was. A newer version is
// refused here the same way, and never overwritten (Format.Write).
var checkpointFormat = durable.Format{Kind: "DRA checkpoint", Field: "version"}

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
	// Version is the file's version (checkpointFormat).
	Version int                         `json:"version"`
	Claims  map[types.UID]PreparedClaim `json:"claims"`
}

// checkpoint keeps the prepared claims in one file, rewritten whole
// (temp → fsync → rename) on every change.
type checkpoint struct{ path string }

func (c checkpoint) load() (map[types.UID]PreparedClaim, error) {
	var f checkpointFile
	err := checkpointFormat.Read(c.path, &f)
	if errors.Is(err, fs.ErrNotExist) {
		return map[types.UID]PreparedClaim{}, nil
	}
	if err != nil {
		return nil, err
	}
	if f.Claims == nil {
		f.Claims = map[types.UID]PreparedClaim{}
	}
	return f.Claims, nil
}

func (c checkpoint) save(claims map[types.UID]PreparedClaim) error {
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("DRA checkpoint directory: %w", err)
	}
	return checkpointFormat.Write(c.path, checkpointFile{Version: checkpointFormat.Version(), Claims: claims})
}
