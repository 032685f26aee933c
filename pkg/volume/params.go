package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// StorageClass parameters plinth understands.
const (
	ParamPool         = "pool"         // name of the pool to carve from
	ParamBackend      = "backend"      // file | btrfs | disk: any pool of this backend
	ParamProvisioning = "provisioning" // thin (default) | thick
)

// Params are the validated parameters of a CreateVolume request.
type Params struct {
	Pool    string
	Backend string
	Thick   bool
}

// ParseParams validates outside parameters. Keys the CO adds
// (csi.storage.k8s.io/*) are ignored; any other unknown key is an error, so
// that a typo in a StorageClass is not silently ignored.
func ParseParams(in map[string]string) (Params, error) {
	var p Params
	for k, v := range in {
		switch {
		case k == ParamPool:
			if err := pool.ValidateName(v); err != nil {
				return Params{}, fmt.Errorf("parameter %q: %w", k, err)
			}
			p.Pool = v
		case k == ParamBackend:
			if v != "file" && v != "btrfs" && v != "disk" {
				return Params{}, fmt.Errorf("%w: parameter %q: %q is not a backend (file, btrfs, disk)", pool.ErrInvalid, k, v)
			}
			p.Backend = v
		case k == ParamProvisioning:
			switch v {
			case "thin", "":
			case "thick":
				p.Thick = true
			default:
				return Params{}, fmt.Errorf("%w: parameter %q: %q is not thin or thick", pool.ErrInvalid, k, v)
			}
		case strings.HasPrefix(k, "csi.storage.k8s.io/"):
		default:
			return Params{}, fmt.Errorf("%w: unknown parameter %q", pool.ErrInvalid, k)
		}
	}
	return p, nil
}

// VolumeID derives a volume's ID from its name, so that a retried create
// (even after a crash that lost the reply) finds the same volume.
func VolumeID(name string) string { return "pv-" + digest(name) }

// SnapshotID derives a snapshot's ID from its name.
func SnapshotID(name string) string { return "sn-" + digest(name) }

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:20])
}

const (
	// DefaultSize is given when a request names no capacity.
	DefaultSize = 1 << 30
	// MaxSize bounds any request (64 TiB).
	MaxSize = 64 << 40
	// sizeAlign: volumes are whole 4 KiB blocks (the loop block size).
	sizeAlign = 4096
)

// minSize is the smallest filesystem mkfs will make, per type.
var minSize = map[string]int64{"xfs": 300 << 20, "btrfs": 128 << 20, "ext4": 8 << 20}

// Size decides a volume's capacity from a request's range: at least
// required (DefaultSize when neither bound is given), rounded up to whole
// blocks and to the filesystem's minimum, never above limit.
func Size(required, limit int64, mode pool.Mode, fsType string) (int64, error) {
	if required < 0 || limit < 0 {
		return 0, fmt.Errorf("%w: negative capacity", pool.ErrInvalid)
	}
	if required > MaxSize {
		return 0, fmt.Errorf("%w: required %d bytes is more than the %d a volume may have", pool.ErrOutOfRange, required, int64(MaxSize))
	}
	if limit > 0 && required > limit {
		return 0, fmt.Errorf("%w: required %d bytes is more than the limit %d", pool.ErrOutOfRange, required, limit)
	}
	size := required
	if size == 0 {
		size = DefaultSize
		if limit > 0 && limit < size {
			size = limit
		}
	}
	if mode == pool.ModeFilesystem && size < minSize[fsType] {
		size = minSize[fsType]
	}
	if r := size % sizeAlign; r != 0 {
		size += sizeAlign - r
	}
	if limit > 0 && size > limit {
		return 0, fmt.Errorf("%w: smallest possible volume is %d bytes, limit is %d", pool.ErrOutOfRange, size, limit)
	}
	return size, nil
}

// FormatBytes writes n the way Kubernetes quantities read: 5Gi, 512Mi, or
// bytes when it is not a whole number of KiB.
func FormatBytes(n int64) string {
	units := []string{"Ei", "Pi", "Ti", "Gi", "Mi", "Ki"}
	for i, u := range units {
		shift := uint(10 * (len(units) - i))
		if n >= 1<<shift && n%(1<<shift) == 0 {
			return fmt.Sprintf("%d%s", n>>shift, u)
		}
	}
	if n >= 1<<30 {
		return fmt.Sprintf("%.1fGi", float64(n)/(1<<30))
	}
	if n >= 1<<20 {
		return fmt.Sprintf("%.1fMi", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d", n)
}
