package volume

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// Ask is what a front door was asked for a new volume, in the same words
// for both doors: a CSI CreateVolumeRequest (pkg/csi) or a PVC with its
// StorageClass (pkg/provision). Nothing in it is trusted yet;
// NewCreateRequest validates it, once, for both.
type Ask struct {
	Name                      string
	RequiredBytes, LimitBytes int64
	// Block is raw block access; otherwise a filesystem.
	Block bool
	// FsType is the filesystem asked for ("": the pool's default).
	FsType string
	// MultiNode is set when any access asked for reaches the volume from
	// several nodes: a node-local volume cannot serve it.
	MultiNode bool
	// Parameters are the StorageClass's (CSI: the request's) as given.
	Parameters map[string]string
	// MutableParameters are the VolumeAttributesClass's the claim names
	// (CSI: the request's mutable_parameters) as given.
	MutableParameters map[string]string
	Source            *pool.Source
	// Requisite and Preferred are node IDs (see CreateRequest).
	Requisite, Preferred []string
	// Owner is namespace/name of the PVC, when the door knows it; the CSI
	// sidecars' csi.storage.k8s.io/pvc/{namespace,name} parameters say it
	// too.
	Owner string
}

// MaxNameLen bounds a volume or snapshot name.
const MaxNameLen = 1024

// ValidateName checks a CO-given name of a volume or snapshot.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s name is required", pool.ErrInvalid, kind)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %s name is %d bytes, more than %d", pool.ErrInvalid, kind, len(name), MaxNameLen)
	case !utf8.ValidString(name) || strings.ContainsRune(name, 0):
		return fmt.Errorf("%w: %s name is not valid UTF-8 text", pool.ErrInvalid, kind)
	}
	return nil
}

// Params the CSI sidecars add with --extra-create-metadata.
const (
	paramPVCName      = "csi.storage.k8s.io/pvc/name"
	paramPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
)

// NewCreateRequest validates an Ask: the one place where a request for a
// new volume is checked, whichever door it came through.
func NewCreateRequest(a Ask) (CreateRequest, error) {
	if err := ValidateName("volume", a.Name); err != nil {
		return CreateRequest{}, err
	}
	if a.RequiredBytes < 0 || a.LimitBytes < 0 {
		return CreateRequest{}, fmt.Errorf("%w: capacity range must not be negative", pool.ErrInvalid)
	}
	if a.MultiNode {
		return CreateRequest{}, fmt.Errorf("%w: a node-local volume is reachable from one node only (no multi-node access modes)", pool.ErrInvalid)
	}
	params, err := ParseParams(a.Parameters)
	if err != nil {
		return CreateRequest{}, err
	}
	limits, thick, err := ParseMutable(a.MutableParameters)
	if err != nil {
		return CreateRequest{}, err
	}
	if thick != nil {
		params.Thick = *thick
	}
	params.IOLimits = limits
	req := CreateRequest{
		Name: a.Name, RequiredBytes: a.RequiredBytes, LimitBytes: a.LimitBytes,
		Mode: pool.ModeFilesystem, FsType: a.FsType, Params: params, Owner: a.Owner,
	}
	if a.Block {
		req.Mode, req.FsType = pool.ModeBlock, ""
	} else if a.FsType != "" {
		if err := pool.CheckFsType(a.FsType); err != nil {
			return CreateRequest{}, err
		}
	}
	if src := a.Source; src != nil {
		switch {
		case src.SnapshotID != "" && src.VolumeID != "":
			return CreateRequest{}, fmt.Errorf("%w: a content source is a snapshot or a volume, not both", pool.ErrInvalid)
		case src.SnapshotID != "":
			// An ID that is not one of plinth's names no snapshot.
			if err := pool.ValidateID("source snapshot ID", src.SnapshotID); err != nil {
				return CreateRequest{}, fmt.Errorf("%w: %v", pool.ErrNotFound, err)
			}
		case src.VolumeID != "":
			if err := pool.ValidateID("source volume ID", src.VolumeID); err != nil {
				return CreateRequest{}, fmt.Errorf("%w: %v", pool.ErrNotFound, err)
			}
		default:
			return CreateRequest{}, fmt.Errorf("%w: the content source names neither a snapshot nor a volume", pool.ErrInvalid)
		}
		req.Source = &pool.Source{SnapshotID: src.SnapshotID, VolumeID: src.VolumeID}
	}
	for _, list := range [][]string{a.Requisite, a.Preferred} {
		for _, n := range list {
			if n == "" || len(n) > 253 {
				return CreateRequest{}, fmt.Errorf("%w: node ID %q in the topology is not a node name", pool.ErrInvalid, n)
			}
		}
	}
	req.Requisite = dedupe(a.Requisite)
	req.Preferred = dedupe(a.Preferred)
	if req.Owner == "" && a.Parameters[paramPVCName] != "" {
		req.Owner = a.Parameters[paramPVCNamespace] + "/" + a.Parameters[paramPVCName]
	}
	return req, nil
}

func dedupe(in []string) []string {
	var out []string
	seen := make(map[string]struct{}, len(in))
	for _, s := range in {
		if _, dup := seen[s]; !dup {
			seen[s] = struct{}{}
			out = append(out, s)
		}
	}
	return out
}
