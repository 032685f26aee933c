package volume

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/plinth-dev/plinth/pkg/bytesize"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// StorageClass parameters plinth understands.
const (
	ParamPool         = "pool"         // name of the pool to carve from
	ParamBackend      = "backend"      // file | btrfs | disk: any pool of this backend
	ParamProvisioning = "provisioning" // thin (default) | thick
)

// The mutable parameters: a VolumeAttributesClass's (ControllerModifyVolume)
// or a CreateVolume's mutable_parameters. ParamProvisioning is one too.
const (
	ParamReadIOPS            = "readIOPS"
	ParamWriteIOPS           = "writeIOPS"
	ParamReadBytesPerSecond  = "readBytesPerSecond"
	ParamWriteBytesPerSecond = "writeBytesPerSecond"
)

// MutableKeys are the keys ParseMutable accepts.
var MutableKeys = []string{ParamProvisioning, ParamReadIOPS, ParamWriteIOPS, ParamReadBytesPerSecond, ParamWriteBytesPerSecond}

// maxIOPS and maxBytesPerSecond bound a limit: more than any device does.
const (
	maxIOPS           = 1 << 40
	maxBytesPerSecond = 1 << 60
)

// ParseMutable validates mutable parameters and returns the limits they
// name (nil when they name none but 0) and the provisioning (nil when not
// named). At creation a limit not named is no limit; a modification
// changes only what it names (Controller.ModifyVolume). Every key must be one of MutableKeys;
// each limit is a whole number, 0 for none (bytes per second may be a
// quantity: 10Mi, 500M); provisioning is thin or thick. An error names the
// key.
func ParseMutable(in map[string]string) (limits *pool.IOLimits, thick *bool, err error) {
	var l pool.IOLimits
	for _, k := range slices.Sorted(maps.Keys(in)) {
		v := in[k]
		var dst *int64
		bound, quantity := int64(maxIOPS), false
		switch k {
		case ParamProvisioning:
			switch v {
			case "thin", "thick":
				t := v == "thick"
				thick = &t
			default:
				return nil, nil, fmt.Errorf("%w: parameter %q: %q is not thin or thick", pool.ErrInvalid, k, v)
			}
			continue
		case ParamReadIOPS:
			dst = &l.ReadIOPS
		case ParamWriteIOPS:
			dst = &l.WriteIOPS
		case ParamReadBytesPerSecond:
			dst, bound, quantity = &l.ReadBytesPerSecond, maxBytesPerSecond, true
		case ParamWriteBytesPerSecond:
			dst, bound, quantity = &l.WriteBytesPerSecond, maxBytesPerSecond, true
		default:
			return nil, nil, fmt.Errorf("%w: unknown mutable parameter %q (plinth knows %s)", pool.ErrInvalid, k, strings.Join(MutableKeys, ", "))
		}
		n, err := parseLimit(v, quantity)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: parameter %q: %w", pool.ErrInvalid, k, err)
		}
		if n > bound {
			return nil, nil, fmt.Errorf("%w: parameter %q: %d is more than %d", pool.ErrInvalid, k, n, bound)
		}
		*dst = n
	}
	if !l.IsZero() {
		limits = &l
	}
	return limits, thick, nil
}

// parseLimit reads a whole number ≥ 0, or (quantity) a Kubernetes
// quantity that is one.
func parseLimit(v string, quantity bool) (int64, error) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%q is negative", v)
		}
		return n, nil
	}
	if !quantity {
		return 0, fmt.Errorf("%q is not a whole number", v)
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a whole number or a quantity (10Mi, 500M)", v)
	}
	// AsInt64 alone refuses whole numbers it holds as decimals (1.5Gi,
	// 0.5Gi): compare the value instead, after bounding it.
	if q.Sign() < 0 || q.CmpInt64(math.MaxInt64) > 0 {
		return 0, fmt.Errorf("%q is not a whole number of bytes ≥ 0", v)
	}
	n := q.Value()
	if q.CmpInt64(n) != 0 {
		return 0, fmt.Errorf("%q is not a whole number of bytes ≥ 0", v)
	}
	return n, nil
}

// Params are the validated parameters of a CreateVolume request.
type Params struct {
	Pool    string
	Backend string
	Thick   bool
	// IOLimits are those of the request's mutable parameters (nil: none).
	IOLimits *pool.IOLimits
}

// String names the parameters as a person reads them: pool "fast",
// backend file, thick (or "no parameters").
func (p Params) String() string {
	var parts []string
	if p.Pool != "" {
		parts = append(parts, fmt.Sprintf("pool %q", p.Pool))
	}
	if p.Backend != "" {
		parts = append(parts, "backend "+p.Backend)
	}
	if p.Thick {
		parts = append(parts, "thick")
	}
	if len(parts) == 0 {
		return "no parameters"
	}
	return strings.Join(parts, ", ")
}

// coPrefix is the prefix of the parameters Kubernetes itself defines.
const coPrefix = "csi.storage.k8s.io/"

// coKeys are the csi.storage.k8s.io/ parameters Kubernetes and its CSI
// sidecars define for StorageClasses and VolumeSnapshotClasses: the fs
// type, the secrets of each call, and the names the sidecars add.
var coKeys = []string{
	"fstype",
	"provisioner-secret-name", "provisioner-secret-namespace",
	"controller-publish-secret-name", "controller-publish-secret-namespace",
	"node-stage-secret-name", "node-stage-secret-namespace",
	"node-publish-secret-name", "node-publish-secret-namespace",
	"controller-expand-secret-name", "controller-expand-secret-namespace",
	"node-expand-secret-name", "node-expand-secret-namespace",
	"snapshotter-secret-name", "snapshotter-secret-namespace",
	"snapshotter-list-secret-name", "snapshotter-list-secret-namespace",
	"pvc/name", "pvc/namespace", "pv/name",
	"volumesnapshot/name", "volumesnapshot/namespace", "volumesnapshotcontent/name",
}

// didYouMean names the coKeys entry nearest to key (by edit distance, at
// most 3 edits), or is empty.
func didYouMean(key string) string {
	best, bestD := "", 4
	for _, k := range coKeys {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", coPrefix+best)
}

// editDistance is the Levenshtein distance of a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// ParseParams validates outside parameters. Of the keys Kubernetes defines
// (csi.storage.k8s.io/*) the known ones are ignored and a misspelt one is an
// error naming the nearest; any other unknown key is an error too, so that
// a typo in a StorageClass is not silently ignored.
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
		case strings.HasPrefix(k, coPrefix):
			if rest := strings.TrimPrefix(k, coPrefix); !slices.Contains(coKeys, rest) {
				return Params{}, fmt.Errorf("%w: parameter %q is not one of the %s keys Kubernetes defines%s", pool.ErrInvalid, k, coPrefix, didYouMean(rest))
			}
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

// FormatBytes prints a size the way a person reads it (bytesize.Format).
func FormatBytes(n int64) string { return bytesize.Format(n) }
