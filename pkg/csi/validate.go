package csi

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	mountutils "k8s.io/mount-utils"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

func validateName(kind, name string) error {
	if err := volume.ValidateName(kind, name); err != nil {
		return invalid("%v", err)
	}
	return nil
}

func validateID(kind, id string) error {
	if id == "" {
		return invalid("%s is required", kind)
	}
	if err := pool.ValidateID(kind, id); err != nil {
		return invalid("%v", err)
	}
	return nil
}

// mountFlagRE: a plain option, optionally with a value (no commas, no
// spaces, no shell or path tricks).
var mountFlagRE = regexp.MustCompile(`^[a-z0-9_]+(=[A-Za-z0-9_.:@+-]{1,256})?$`)

// Options that would change what is mounted, where, or how it propagates.
var forbiddenFlags = map[string]bool{
	"bind": true, "rbind": true, "remount": true, "move": true, "loop": true,
	"shared": true, "rshared": true, "slave": true, "rslave": true, "private": true,
	"rprivate": true, "unbindable": true, "runbindable": true, "offset": true, "sizelimit": true,
	"suid": true, "dev": true, "defaults": true,
}

func validateMountFlags(flags []string) error {
	if len(flags) > 32 {
		return invalid("%d mount flags, at most 32 are accepted", len(flags))
	}
	for _, f := range flags {
		if !mountFlagRE.MatchString(f) {
			return invalid("mount flag %q is not a plain option (name or name=value)", f)
		}
		name, _, _ := strings.Cut(f, "=")
		if forbiddenFlags[name] {
			return invalid("mount flag %q is not allowed", f)
		}
	}
	return nil
}

// capability checks one volume capability; it returns the volume mode.
func capability(c *csi.VolumeCapability) (pool.Mode, error) {
	if c == nil {
		return "", invalid("volume capability is required")
	}
	var mode pool.Mode
	switch {
	case c.GetBlock() != nil && c.GetMount() == nil:
		mode = pool.ModeBlock
	case c.GetMount() != nil && c.GetBlock() == nil:
		mode = pool.ModeFilesystem
		m := c.GetMount()
		if ft := m.GetFsType(); ft != "" {
			if err := pool.CheckFsType(ft); err != nil {
				return "", invalid("%v", err)
			}
		}
		if err := validateMountFlags(m.GetMountFlags()); err != nil {
			return "", err
		}
	default:
		return "", invalid("volume capability must have exactly one of block or mount access type")
	}
	if c.GetAccessMode() == nil {
		return "", invalid("volume capability has no access mode")
	}
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
	default:
		return "", invalid("access mode %s is not supported: plinth volumes are node-local", c.GetAccessMode().GetMode())
	}
	return mode, nil
}

// capabilities checks a list that must be non-empty and of one mode, and
// returns that mode and the fs type asked for.
func capabilities(cs []*csi.VolumeCapability) (pool.Mode, string, error) {
	if len(cs) == 0 {
		return "", "", invalid("volume capabilities are required")
	}
	var mode pool.Mode
	fsType := ""
	for _, c := range cs {
		m, err := capability(c)
		if err != nil {
			return "", "", err
		}
		if mode != "" && m != mode {
			return "", "", invalid("volume capabilities mix block and mount access")
		}
		mode = m
		if ft := c.GetMount().GetFsType(); ft != "" {
			if fsType != "" && ft != fsType {
				return "", "", invalid("volume capabilities ask for fs types %s and %s", fsType, ft)
			}
			fsType = ft
		}
	}
	return mode, fsType, nil
}

func capacityRange(r *csi.CapacityRange) (required, limit int64, err error) {
	required, limit = r.GetRequiredBytes(), r.GetLimitBytes()
	if required < 0 || limit < 0 {
		return 0, 0, invalid("capacity range must not be negative")
	}
	return required, limit, nil
}

// Paths checks staging and target paths against the roots a CO may use and
// the roots plinth owns.
type Paths struct {
	// Allowed are the directories under which staging and target paths
	// must lie (the kubelet's directory on a node).
	Allowed []string
	// Owned are plinth's own directories (state, pools): never a target.
	Owned []string
}

// under reports whether path is root or lies below it.
func under(path, root string) bool { return mountutils.PathWithinBase(path, root) }

// Resolve validates path (absolute, clean, within Allowed after resolving
// symlinks in its parent, outside Owned, and not itself a symlink) and
// returns it with its parent's symlinks resolved: what the node works on,
// so that two spellings of one place are one place (mount table lookups,
// locks, records).
func (p Paths) Resolve(kind, path string, lstat func(string) (isSymlink bool, err error), evalParent func(string) (string, error)) (string, error) {
	switch {
	case path == "":
		return "", invalid("%s is required", kind)
	case len(path) > 4096 || strings.ContainsRune(path, 0):
		return "", invalid("%s is not a usable path", kind)
	case !filepath.IsAbs(path) || filepath.Clean(path) != path:
		return "", invalid("%s %q must be absolute and clean (no '..', '//' or trailing '/')", kind, path)
	}
	resolvedParent, err := evalParent(filepath.Dir(path))
	if err != nil {
		return "", fmt.Errorf("%s %q: parent directory: %w", kind, path, errNotFoundPath)
	}
	resolved := filepath.Join(resolvedParent, filepath.Base(path))
	for _, cand := range []string{path, resolved} {
		for _, o := range p.Owned {
			if under(cand, o) || under(o, cand) {
				return "", invalid("%s %q lies in plinth's own directory %s", kind, path, o)
			}
		}
		ok := len(p.Allowed) == 0
		for _, a := range p.Allowed {
			if under(cand, a) && cand != a {
				ok = true
			}
		}
		if !ok {
			return "", invalid("%s %q is not strictly below one of the allowed directories %v", kind, path, p.Allowed)
		}
	}
	if isLink, err := lstat(path); err == nil && isLink {
		return "", invalid("%s %q is a symbolic link", kind, path)
	}
	return resolved, nil
}

var errNotFoundPath = fmt.Errorf("does not exist: %w", pool.ErrNotFound)

// parseParams validates StorageClass parameters.
func parseParams(in map[string]string) (volume.Params, error) {
	p, err := volume.ParseParams(in)
	if err != nil {
		return volume.Params{}, invalid("%v", err)
	}
	return p, nil
}
