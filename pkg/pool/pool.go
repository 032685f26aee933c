package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Sentinel errors; callers check them with errors.Is and map them to their
// own vocabulary (pkg/csi maps them to gRPC codes).
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists with different parameters")
	ErrNoSpace     = errors.New("not enough space")
	ErrInvalid     = errors.New("invalid argument")
	ErrUnsupported = errors.New("not supported by this pool")
	ErrInUse       = errors.New("in use")
	ErrOutOfRange  = errors.New("out of range")
	ErrNotReady    = errors.New("not ready")
	// ErrDeleting: the ID\'s record is from a delete that was interrupted.
	ErrDeleting = errors.New("deletion in progress")
)

// FsTypes are the filesystems plinth makes on volumes, the default first:
// the one list every check uses.
func FsTypes() []string { return []string{"ext4", "xfs", "btrfs"} }

// CheckFsType refuses a filesystem plinth does not make ("" is refused too:
// callers that allow a default check for it first).
func CheckFsType(fsType string) error {
	if !slices.Contains(FsTypes(), fsType) {
		return fmt.Errorf("%w: fs type %q is not one of %s", ErrInvalid, fsType, strings.Join(FsTypes(), ", "))
	}
	return nil
}

// Mode is how a volume is consumed.
type Mode string

const (
	ModeFilesystem Mode = "filesystem"
	ModeBlock      Mode = "block"
)

// State of a record on disk.
type State string

const (
	// StateCreating: the record reserves capacity; storage may be partial.
	StateCreating State = "creating"
	// StateReady: storage is complete.
	StateReady State = "ready"
	// StateDeleting: a delete began; the storage may be partly gone.
	StateDeleting State = "deleting"
)

// Source is what a new volume is filled from.
type Source struct {
	SnapshotID string `json:"snapshotID,omitempty"`
	VolumeID   string `json:"volumeID,omitempty"`
	// Node holds the source when it is another node than the volume's:
	// the volume is made by an Importer, its content sent by that node.
	Node string `json:"node,omitempty"`
}

// Volume is the record of one volume, stored beside its storage.
type Volume struct {
	// Schema is the record's version (VolumeRecords).
	Schema        int     `json:"schema"`
	ID            string  `json:"id"`
	Name          string  `json:"name"`
	Pool          string  `json:"pool"`
	CapacityBytes int64   `json:"capacityBytes"`
	Mode          Mode    `json:"mode"`
	FsType        string  `json:"fsType,omitempty"`
	Thick         bool    `json:"thick,omitempty"`
	Source        *Source `json:"source,omitempty"`
	// Blank: the volume's storage was made of zeros (no source) and no
	// mkfs has been started on it since. Only a pool that implements
	// BlankRecorder sets it, and the node clears it (MarkFormatted)
	// before it formats: a blank volume is formatted without a probe,
	// anything else is probed first. Records without it are not blank.
	Blank bool `json:"blank,omitempty"`
	// Disk is the identity of the whole disk the volume is (disk pools).
	Disk string `json:"disk,omitempty"`
	// DiskHanded: the whole disk was found empty and unheld when it was
	// first attached, and went to the volume's consumer then; from here
	// on what is on it is the volume's (disk pools).
	DiskHanded bool `json:"diskHanded,omitempty"`
	// DiskFsUUID is the filesystem the node made on the whole disk of a
	// filesystem volume: a later stage mounts that one and no other, and
	// a delete wipes that one and no other (disk pools).
	DiskFsUUID string `json:"diskFsUUID,omitempty"`
	// Problem, never stored, says why the volume's storage cannot be
	// reached now (its disk gone, its pool's filesystem failed): set by
	// the node from VolumeChecker when it reads the volume.
	Problem    string            `json:"-"`
	Parameters map[string]string `json:"parameters,omitempty"`
	// IOLimits are the limits the volume's consumers are held to (its
	// VolumeAttributesClass's); nil: none. The node enforces them in the
	// block IO controller of each pod the volume is published to.
	IOLimits  *IOLimits `json:"ioLimits,omitempty"`
	State     State     `json:"state"`
	CreatedAt time.Time `json:"createdAt"`
}

// Snapshot is the record of one snapshot, stored beside its data.
type Snapshot struct {
	// Schema is the record's version (SnapshotRecords).
	Schema         int    `json:"schema"`
	ID             string `json:"id"`
	Name           string `json:"name"`
	Pool           string `json:"pool"`
	SourceVolumeID string `json:"sourceVolumeID"`
	// Mode and FsType are the source volume's, recorded when the snapshot
	// is made (Index.BeginSnapshot): a volume restored from the snapshot
	// must have the same (Index.Source). Records written before plinth
	// recorded them have neither; OpenIndex fills them from the source
	// volume's record while it exists (docs/limitations.md).
	Mode      Mode      `json:"mode,omitempty"`
	FsType    string    `json:"fsType,omitempty"`
	SizeBytes int64     `json:"sizeBytes"`
	State     State     `json:"state"`
	CreatedAt time.Time `json:"createdAt"`
}

// Stats is a pool's capacity picture.
type Stats struct {
	// TotalBytes and FreeBytes come from statfs of the pool's filesystem.
	TotalBytes int64
	FreeBytes  int64
	// CommittedBytes is what volumes may still claim beyond what they use
	// now (thin volumes' unwritten capacity, records still being created).
	CommittedBytes int64
	// ProvisionedBytes is the sum of volume capacities.
	ProvisionedBytes int64
	Volumes          int
	// LargestVolumeBytes, when set, caps what one volume may be given
	// below AllocatableBytes (a disk pool: the largest free disk).
	LargestVolumeBytes int64
	// Degraded says why a healthy pool runs with less redundancy than it
	// was made with (a raid1 pool missing a disk); "" when it does not.
	Degraded string
	// MaxVolumes, when set, is how many volumes the pool can hold in all
	// (a disk pool: one per disk present); 0: bounded by bytes alone.
	MaxVolumes int
}

// MaxVolumeBytes is the largest volume the pool can make now.
func (s Stats) MaxVolumeBytes() int64 {
	a := s.AllocatableBytes()
	if s.LargestVolumeBytes > 0 && s.LargestVolumeBytes < a {
		return s.LargestVolumeBytes
	}
	return a
}

// AllocatableBytes is what a new volume may be given without over-committing.
func (s Stats) AllocatableBytes() int64 {
	a := s.FreeBytes - s.CommittedBytes
	if a < 0 {
		return 0
	}
	return a
}

// Attachment is how a node reaches a volume's storage: exactly one of Device
// (a block device to format and mount, or hand out raw) or Dir (a directory
// to bind mount) is set.
type Attachment struct {
	Device string
	Dir    string
	// ReadOnly are the devices of the volume that refuse writes, each made
	// by AttachReadOnly for one read-only publish of a block volume.
	ReadOnly []string
	// Made is set by Attach when this very call made Device (bound a loop
	// device that was not bound to the volume before): the one thing a
	// failed stage may release (ReleaseDevice). A device that was there
	// before, whoever bound it, is never the undo's to release.
	Made bool
}

// VolumeUsage is what a volume holds, for NodeGetVolumeStats where the
// mounted filesystem cannot tell (quota-bounded directories).
type VolumeUsage struct {
	TotalBytes, UsedBytes int64
}

// Capabilities of a backend.
type Capabilities struct {
	Block   bool
	FsTypes []string // filesystems the pool can put on a volume; first is the default
	// OwnFs is true when the pool hands out directories on its own filesystem
	// (no mkfs): fs type must then be empty or FsTypes[0].
	OwnFs bool
}

// Pool is one place on a node that volumes are carved from.
// Every method is idempotent; callers serialise calls per volume ID.
type Pool interface {
	Name() string
	Backend() string
	Capabilities() Capabilities
	Stats(ctx context.Context) (Stats, error)

	// CreateVolume makes v (ID, Name, CapacityBytes, Mode, FsType, Thick,
	// Source set by the caller). The same request again returns the same
	// volume; a different one under the same ID returns ErrExists.
	CreateVolume(ctx context.Context, v Volume) (Volume, error)
	DeleteVolume(ctx context.Context, id string) error
	ExpandVolume(ctx context.Context, id string, capacityBytes int64) (Volume, error)
	GetVolume(ctx context.Context, id string) (Volume, error)
	ListVolumes(ctx context.Context) ([]Volume, error)

	CreateSnapshot(ctx context.Context, s Snapshot) (Snapshot, error)
	DeleteSnapshot(ctx context.Context, id string) error
	GetSnapshot(ctx context.Context, id string) (Snapshot, error)
	ListSnapshots(ctx context.Context) ([]Snapshot, error)

	// Attach makes the volume's storage reachable on this node (a loop
	// device for an image file); Detach undoes it. Both are idempotent.
	// Detach releases every device of the volume, read-only ones too (a
	// FullAttacher: the ones AttachedAll or Attached last named).
	Attach(ctx context.Context, id string) (Attachment, error)
	Detach(ctx context.Context, id string) error
	// Attached reports how the volume is reachable now, without making
	// anything (ok=false: nothing attached). It is how the node tells the
	// volume's own mounts from anything else at a path.
	Attached(ctx context.Context, id string) (a Attachment, ok bool, err error)
	// AttachReadOnly makes a new device of a block volume that refuses
	// writes, for one read-only publish; ReleaseDevice releases such a
	// device, and only if it is one of this volume's.
	AttachReadOnly(ctx context.Context, id string) (string, error)
	ReleaseDevice(ctx context.Context, id, device string) error
	// Usage reports usage for volumes whose size the mounted filesystem
	// does not show (ok=false where statfs of the mount is right).
	Usage(ctx context.Context, id string) (u VolumeUsage, ok bool, err error)
}

// IOLimits are a volume's IO limits; a zero field is no limit.
type IOLimits struct {
	ReadIOPS            int64 `json:"readIOPS,omitempty"`
	WriteIOPS           int64 `json:"writeIOPS,omitempty"`
	ReadBytesPerSecond  int64 `json:"readBytesPerSecond,omitempty"`
	WriteBytesPerSecond int64 `json:"writeBytesPerSecond,omitempty"`
}

// IsZero reports whether l limits nothing.
func (l *IOLimits) IsZero() bool { return l == nil || *l == IOLimits{} }

// Mutable is what may change of a volume after it is made
// (ControllerModifyVolume): its provisioning and its IO limits.
type Mutable struct {
	Thick    bool
	IOLimits *IOLimits
}

// MutableOf returns v's mutable attributes.
func MutableOf(v Volume) Mutable {
	m := Mutable{Thick: v.Thick}
	if !v.IOLimits.IsZero() {
		l := *v.IOLimits
		m.IOLimits = &l
	}
	return m
}

// Equal reports whether m and o ask for the same.
func (m Mutable) Equal(o Mutable) bool {
	a, b := IOLimits{}, IOLimits{}
	if m.IOLimits != nil {
		a = *m.IOLimits
	}
	if o.IOLimits != nil {
		b = *o.IOLimits
	}
	return m.Thick == o.Thick && a == b
}

// Modifier is a pool whose volumes' mutable attributes can change.
// ModifyVolume makes the storage match m (thick: all its blocks
// allocated; thin: the record says so, and the node gives back what the
// mounted filesystem does not use) and records m; again with the same m,
// it changes nothing. A pool whose volumes cannot be thick refuses a
// change of provisioning with ErrInvalid, and a thick volume that does not
// fit with ErrNoSpace, leaving the volume as it was.
type Modifier interface {
	ModifyVolume(ctx context.Context, id string, m Mutable) (Volume, error)
}

// Wrapper is a pool that wraps another (pkg/pool/guard): the optional
// interfaces below are looked for through it with As.
type Wrapper interface {
	Unwrap() Pool
}

// As finds an optional interface T on p, or on the pool p wraps (and so
// on): a wrapper that adds checks does not hide what the pool under it
// can do.
func As[T any](p Pool) (T, bool) {
	for p != nil {
		if t, ok := p.(T); ok {
			return t, true
		}
		w, ok := p.(Wrapper)
		if !ok {
			break
		}
		p = w.Unwrap()
	}
	var zero T
	return zero, false
}

// FullAttacher is a pool whose Attached may leave out devices something
// else bound to a volume since the pool last looked (the file pool's
// answers come from the loop devices it attached or found); AttachedAll
// looks at every device. The node calls it where a device left out would
// be acted on: before it releases the volume's devices.
type FullAttacher interface {
	AttachedAll(ctx context.Context, id string) (a Attachment, ok bool, err error)
}

// FilesystemRecorder is implemented by pools whose storage others can
// reach (whole disks): the node tells it, after it formatted a volume's
// device, that the filesystem there is the volume's.
type FilesystemRecorder interface {
	RecordFilesystem(ctx context.Context, id, device string) error
}

// DeviceChecker is implemented by pools whose volumes' devices can turn
// into another volume's behind plinth's back (whole disks that trade
// identities): the node asks before it hands the device to a consumer.
type DeviceChecker interface {
	CheckDevice(ctx context.Context, id string) error
}

// BlankRecorder is implemented by pools that record which volumes are
// blank (Volume.Blank).
type BlankRecorder interface {
	// MarkFormatted records durably that the volume is no longer blank;
	// the node calls it before mkfs writes anything, so that a crash
	// during mkfs leads to a probe at the next stage, never to a second
	// mkfs that takes what the first left for zeros.
	MarkFormatted(ctx context.Context, id string) error
}

// ImportImage is an ImportTarget filled as an image: the source's bytes at
// their offsets.
const ImportImage = "image"

// ImportImageDelta is an ImportTarget brought up to date in place: only
// what differs from what it holds is written.
const ImportImageDelta = "image-delta"

// ImportDevice is an ImportTarget filled as an image written onto a whole
// disk (OpenDevice): what is not written must read as zeros.
const ImportDevice = "device"

// ImportStream is an ImportTarget filled from one stream, whole (a btrfs
// send stream): an attempt that breaks is started over.
const ImportStream = "stream"

// ImportTarget is where a volume whose content comes from another node is
// filled (pkg/transfer): for an image, the partial image and the record of
// how far it is, both kept across restarts until the import finishes or
// the volume is deleted; for a stream, what takes it.
type ImportTarget struct {
	Format   string
	Image    string
	Progress string
	// Receive, for ImportStream, begins an attempt: what an earlier one
	// left is dropped, and the stream is written to what it returns.
	// Close of that says whether all that was written made a whole,
	// durable content; cancelling ctx ends the attempt.
	Receive func(ctx context.Context) (io.WriteCloser, error)
	// OpenDevice, for ImportDevice, opens the volume's disk for writing,
	// exclusively (nothing mounts or holds it meanwhile), checked to be
	// the disk the volume owns.
	OpenDevice func() (*os.File, error)
}

// Send is a snapshot or a volume sent to another node as a stream.
type Send struct {
	// ID names the content and its version.
	ID string
	// DataBytes is about what the stream carries (the data referenced).
	DataBytes int64
	// Size is what the content needs on the receiving side, at most.
	Size int64
	// Run writes the stream to w; it may run more than once (each run
	// writes the whole stream again). Cancelling ctx ends it.
	Run func(ctx context.Context, w io.Writer) error
	// Close releases what the send holds (a snapshot made for it).
	Close func()
}

// Sender is a pool whose snapshots and volumes go to another node as a
// stream (btrfs send) rather than an image.
type Sender interface {
	// SendSnapshot sends a Ready snapshot whole.
	SendSnapshot(ctx context.Context, id string) (Send, Snapshot, error)
	// SendVolume sends what a Ready volume holds now that differs from
	// base, a snapshot of it that the receiver was filled from (for a
	// sync: the caller keeps writers away).
	SendVolume(ctx context.Context, id, base string) (Send, Volume, error)
}

// Importer is a pool that makes volumes from another node's snapshots.
type Importer interface {
	// BeginImport records v (Source.Node and Source.SnapshotID set), its
	// capacity reserved, and says where to fill it; the volume stays
	// "creating" until FinishImport. Again for the same v: the same.
	BeginImport(ctx context.Context, v Volume) (ImportTarget, Volume, error)
	// FinishImport makes the filled image the volume's and marks it ready.
	FinishImport(ctx context.Context, id string) (Volume, error)
}

// Exporter is a pool whose snapshots and volumes can be sent to another
// node.
type Exporter interface {
	// ExportSnapshot opens the snapshot's image read-only.
	ExportSnapshot(ctx context.Context, id string) (*os.File, Snapshot, error)
	// ExportVolume opens a Ready volume's image read-only (for a sync:
	// the caller keeps writers away).
	ExportVolume(ctx context.Context, id string) (*os.File, Volume, error)
}

// Syncer is a pool whose Ready volumes can be brought up to date in place
// from another node (a move's final sync).
type Syncer interface {
	SyncTarget(ctx context.Context, id string) (ImportTarget, error)
	FinishSync(ctx context.Context, id string) error
}

// VolumeChecker is implemented by pools that can tell that a volume's
// storage is out of reach (a disk pool whose disk is gone, a pool whose
// disks or filesystem failed).
type VolumeChecker interface {
	CheckVolume(ctx context.Context, id string) error
}

var idRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$`)

// ValidateID checks an identifier that becomes a path element: 1–64
// characters of lower-case letters, digits and '-', not starting or ending
// with '-'. It is called before any filepath.Join.
func ValidateID(kind, id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("%w: %s %q must be 1-64 characters of [a-z0-9-], starting and ending alphanumeric", ErrInvalid, kind, id)
	}
	return nil
}

// ValidateName checks a pool name (same rules as IDs, at most 32 characters).
func ValidateName(name string) error {
	if len(name) > 32 {
		return fmt.Errorf("%w: pool name %q longer than 32 characters", ErrInvalid, name)
	}
	return ValidateID("pool name", name)
}

// ResolveDir resolves the symlinks of dir; a part of it that does not
// exist yet (a pool below the root, created on open) is kept as written
// below the resolved part that does.
func ResolveDir(dir string) (string, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err == nil {
		return real, nil
	}
	parent := filepath.Dir(dir)
	if !errors.Is(err, os.ErrNotExist) || parent == dir {
		return "", fmt.Errorf("resolve %s: %w", dir, err)
	}
	if _, lerr := os.Lstat(dir); lerr == nil {
		return "", fmt.Errorf("resolve %s: %w", dir, err) // a dangling symlink
	}
	real, err = ResolveDir(parent)
	if err != nil {
		return "", err
	}
	return filepath.Join(real, filepath.Base(dir)), nil
}

// WithParameter is a copy of parameters with k set to v (a record's
// parameters are never changed in place: the index hands out copies).
func WithParameter(parameters map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(parameters)+1)
	for a, b := range parameters {
		out[a] = b
	}
	out[k] = v
	return out
}
