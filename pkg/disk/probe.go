package disk

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/plinth-dev/plinth/pkg/mount"
)

// Blkid probes devices with util-linux's blkid in low-level mode (-p: it
// reads the device itself, not the cache), which knows every filesystem,
// RAID, LVM, swap and partition-table signature util-linux does.
type Blkid struct {
	Run mount.Runner
}

var _ Prober = Blkid{}

// Probe returns what blkid finds on device; several conflicting
// signatures are reported as such, not as nothing.
func (b Blkid) Probe(ctx context.Context, device string) (Signature, error) {
	out, err := b.Run.Run(ctx, "blkid", "-p", "-o", "export", device)
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() == 2:
		return Signature{}, nil // nothing found
	case strings.Contains(string(out), "ambivalent"):
		return Signature{Type: "ambivalent"}, nil // more than one signature: never free
	default:
		return Signature{}, fmt.Errorf("blkid %s: %w", device, err)
	}
	tags := mount.BlkidTags(out)
	s := Signature{Type: tags["TYPE"], UUID: tags["UUID"], Label: tags["LABEL"], PTType: tags["PTTYPE"]}
	if s.Empty() {
		s.Type = "unknown" // blkid said something is there
	}
	return s, nil
}
