package iolimit

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"golang.org/x/sys/unix"
)

var (
	// ErrInvalid: a pod UID, key, device or limit that is refused before
	// anything is written.
	ErrInvalid = errors.New("invalid argument")
	// ErrPodNotFound: no cgroup of the pod under the hierarchy (not made
	// yet, or already removed).
	ErrPodNotFound = errors.New("pod cgroup not found")
	// ErrUnsupported: neither a cgroup v1 blkio hierarchy with blk-throttle
	// nor a cgroup v2 hierarchy with the io controller.
	ErrUnsupported = errors.New("no cgroup block IO throttling")
)

// Limits are IO limits for one volume; 0 means no limit for that field.
type Limits struct {
	ReadIOPS, WriteIOPS, ReadBytesPerSecond, WriteBytesPerSecond uint64
}

// IsZero reports whether l limits nothing.
func (l Limits) IsZero() bool { return l == Limits{} }

// tightest is the limit of both l and o at once: per field, the smaller
// of the two that limit it.
func (l Limits) tightest(o Limits) Limits {
	m := func(a, b uint64) uint64 {
		switch {
		case a == 0:
			return b
		case b == 0:
			return a
		}
		return min(a, b)
	}
	return Limits{
		ReadIOPS:            m(l.ReadIOPS, o.ReadIOPS),
		WriteIOPS:           m(l.WriteIOPS, o.WriteIOPS),
		ReadBytesPerSecond:  m(l.ReadBytesPerSecond, o.ReadBytesPerSecond),
		WriteBytesPerSecond: m(l.WriteBytesPerSecond, o.WriteBytesPerSecond),
	}
}

// Device is a block device by number.
type Device struct{ Major, Minor uint32 }

func (d Device) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

func (d Device) compare(o Device) int {
	if d.Major != o.Major {
		return cmpU32(d.Major, o.Major)
	}
	return cmpU32(d.Minor, o.Minor)
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// The kernel's dev_t: MKDEV(major, minor) shifts the major by 20 bits
// without checking either, so a larger minor would name another device.
const (
	maxMajor = 1<<12 - 1
	maxMinor = 1<<20 - 1
)

func (d Device) validate() error {
	switch {
	case d.Major == 0:
		return fmt.Errorf("device %s: major 0 is no block device: %w", d, ErrInvalid)
	case d.Major > maxMajor || d.Minor > maxMinor:
		return fmt.Errorf("device %s: out of the kernel's device number range: %w", d, ErrInvalid)
	}
	return nil
}

// DeviceOf returns the device number of the block device node at path
// (stat: a symlink such as /dev/disk/by-id/… is followed). Anything but a
// block device is refused.
func DeviceOf(path string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Device{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return Device{}, fmt.Errorf("%s is not a block device: %w", path, ErrInvalid)
	}
	d := Device{Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)}
	if err := d.validate(); err != nil {
		return Device{}, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// validPodUID reports whether uid is a Kubernetes pod UID: a UUID in its
// 36-character form (8-4-4-4-12 hex digits), or the 32 hex digits the
// kubelet gives a static pod. Nothing else becomes part of a path.
func validPodUID(uid string) bool {
	hex := func(c byte) bool {
		return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
	}
	switch len(uid) {
	case 32:
		for i := range len(uid) {
			if !hex(uid[i]) {
				return false
			}
		}
		return true
	case 36:
		for i := range len(uid) {
			switch i {
			case 8, 13, 18, 23:
				if uid[i] != '-' {
					return false
				}
			default:
				if !hex(uid[i]) {
					return false
				}
			}
		}
		return true
	}
	return false
}

// podDirUID returns the pod UID a cgroup directory name is made of, by
// the kubelet's cgroupfs driver (pod<uid>) or its systemd driver
// (kubepods-<qos>-pod<uid with _ for ->.slice, kubepods-pod<…>.slice,
// with any cgroup root's prefix before kubepods), and whether it is one.
func podDirUID(name string) (string, bool) {
	if uid, ok := strings.CutPrefix(name, "pod"); ok && validPodUID(uid) {
		return uid, true
	}
	rest, ok := strings.CutSuffix(name, ".slice")
	if !ok || !strings.Contains(name, "kubepods") {
		return "", false
	}
	i := strings.LastIndex(rest, "-pod")
	if i < 0 {
		return "", false
	}
	uid := strings.ReplaceAll(rest[i+len("-pod"):], "_", "-")
	if !validPodUID(uid) {
		return "", false
	}
	return uid, true
}

// v1Value is what a cgroup v1 throttle file takes for n: 0 removes the
// rule. The kernel keeps an IOPS limit in 32 bits and truncates a larger
// value (2^32 would become 0: no IO at all), so those are clamped to
// 2^32-1, which it takes for no limit.
func v1Value(n uint64, iops bool) uint64 {
	if iops {
		return min(n, math.MaxUint32)
	}
	return n
}

// v2Value is what io.max takes for n: "max" for no limit. Kernels that
// ignore a value of 1 (they keep the previous limit) get 2, the least
// they take.
func v2Value(n uint64) string {
	switch n {
	case 0:
		return "max"
	case 1:
		n = 2
	}
	return fmt.Sprint(n)
}
