package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/mount"
)

// ErrHeld: the kernel refuses an exclusive open of a device: a filesystem
// is mounted from it (btrfs: from any of its devices), it is swap, a
// member of an md or device-mapper device, or a program opened it with
// O_EXCL (mkfs, wipefs, a database on a raw device).
var ErrHeld = errors.New("held open exclusively")

// Wipefs probes devices the way util-linux's wipefs does before it erases
// anything: every signature libblkid knows (filesystems, RAID and LVM
// members, swap, crypto headers, partition tables, the backup GPT at the
// end of the disk included), superblocks with bad checksums too, all of
// them rather than the first. `blkid -p` stops short of that: a disk
// whose primary GPT is zeroed and whose backup GPT is intact is nothing
// to blkid and a partitioned disk to wipefs.
type Wipefs struct {
	Run mount.Runner
}

var _ Prober = Wipefs{}

// wipefsOutput is `wipefs --json --output UUID,LABEL,TYPE,OFFSET,USAGE`.
type wipefsOutput struct {
	Signatures []struct {
		UUID   *string `json:"uuid"`
		Label  *string `json:"label"`
		Type   string  `json:"type"`
		Offset string  `json:"offset"`
		Usage  string  `json:"usage"`
	} `json:"signatures"`
}

// Probe returns every signature on device. Reading it changes nothing
// (wipefs without --all opens the device read-only and erases nothing).
func (w Wipefs) Probe(ctx context.Context, device string) (Signature, error) {
	out, err := w.Run.Run(ctx, "wipefs", "--json", "--output", "UUID,LABEL,TYPE,OFFSET,USAGE", device)
	if err != nil {
		return Signature{}, fmt.Errorf("wipefs %s: %w", device, err)
	}
	return parseWipefs(out)
}

// parseWipefs reads wipefs's JSON (no output at all: nothing found).
func parseWipefs(out []byte) (Signature, error) {
	var s Signature
	if len(strings.TrimSpace(string(out))) == 0 {
		return s, nil
	}
	var o wipefsOutput
	if err := json.Unmarshal(out, &o); err != nil {
		return Signature{}, fmt.Errorf("read wipefs output: %w", err)
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	for _, f := range o.Signatures {
		typ := f.Type
		if typ == "" {
			typ = "unknown"
		}
		s.Found = append(s.Found, fmt.Sprintf("%s at offset %s", typ, f.Offset))
		switch {
		case f.Usage == "partition-table" || typ == "PMBR":
			if s.PTType == "" || s.PTType == "PMBR" {
				s.PTType = typ
			}
		case s.Type == "":
			s.Type, s.UUID, s.Label = typ, str(f.UUID), str(f.Label)
		case s.Type != typ || s.UUID != str(f.UUID):
			// Two different signatures (what blkid calls ambivalent):
			// the first names the disk, Found lists both.
			s.Ambivalent = true
		}
	}
	return s, nil
}

// Exclusive opens device exclusively and closes it at once: ErrHeld when
// the kernel refuses (what mountinfo and the holders directories do not
// show: a btrfs member, a program's O_EXCL). While it is open, another
// program's exclusive open (a mount, a mkfs) fails; it is open for two
// system calls.
func (w Wipefs) Exclusive(device string) error {
	return Exclusive(device)
}

// Exclusive is Wipefs.Exclusive for any caller. The descriptor exists
// only while syscall.ForkLock is held for reading: a child forked by
// another goroutine would otherwise keep a copy of it, and the disk
// claimed, until it execs (see fsimage's writeExcl).
func Exclusive(device string) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%s: %w (by a mounted filesystem, swap, RAID or LVM, or a program)", device, ErrHeld)
	}
	if err != nil {
		return fmt.Errorf("open %s exclusively: %w", filepath.Clean(device), err)
	}
	return unix.Close(fd)
}
