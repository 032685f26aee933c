package mount

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// IsMountSource reports whether dir (or anything below it) is the source of
// a bind mount somewhere, as seen in /proc/self/mountinfo.
func IsMountSource(dir string) (bool, error) {
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	dir = filepath.Clean(dir)
	for _, m := range mounts {
		// For a bind mount of a subdirectory, Root is the path inside the
		// source filesystem; compare against dir's suffix under that
		// filesystem's mount point.
		for _, base := range mounts {
			if base.Major != m.Major || base.Minor != m.Minor || base.Root != "/" {
				continue
			}
			rel, err := filepath.Rel(base.Mountpoint, dir)
			if err != nil || strings.HasPrefix(rel, "..") {
				continue
			}
			inside := filepath.Join("/", rel)
			if m.Root == inside || strings.HasPrefix(m.Root, inside+"/") {
				if m.Mountpoint != base.Mountpoint {
					return true, nil
				}
			}
		}
	}
	return false, nil
}
