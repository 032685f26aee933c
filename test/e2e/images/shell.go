// Package images holds what the end-to-end suite's test images have
// beyond plinth's own image (hack/image/oci): a small shell userland.
package images

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/plinth-dev/plinth/hack/image/oci"
)

// busyboxDD stands in for dd: Debian 12's busybox (1.35) has no oflag=nocache, which the storage
// suite's block specs write with; conv=fsync also puts the data on the device before dd returns.
const busyboxDD = `#!/bin/busybox sh
n=0
for a in "$@"; do
	[ $n = 0 ] && set --
	n=1
	case $a in
	oflag=nocache) set -- "$@" conv=fsync ;;
	*) set -- "$@" "$a" ;;
	esac
done
exec /bin/busybox dd "$@"
`

// Shell is a small userland for test images: this machine's static busybox
// (Debian's busybox-static) at /bin/busybox with a link per applet in /bin,
// Debian's bash as /bin/sh (with the libraries it loads), /tmp, and the users
// root and nobody. The shell is not busybox's: busybox's shell runs its own
// applets before anything in PATH, so `sh -c "... | dd oflag=nocache"` (the
// storage suite's block writes) would never reach the dd stand-in. Nor dash:
// the suite's scripts use `let`.
func Shell() ([]oci.File, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox (install busybox-static): %w", err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	f, err := oci.Binary(bb, "/bin/busybox")
	if err != nil {
		return nil, err
	}
	files := []oci.File{f,
		{Path: "/bin/dd", Mode: 0o755, Content: []byte(busyboxDD)},
		{Path: "/tmp", Mode: 0o1777, Dir: true},
		{Path: "/etc/passwd", Mode: 0o644, Content: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Mode: 0o644, Content: []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && a != "dd" && a != "sh" {
			files = append(files, oci.File{Path: "/bin/" + a, Link: "busybox"})
		}
	}
	shell, err := oci.HostTools([]string{"bash"})
	if err != nil {
		return nil, err
	}
	for _, f := range shell {
		// bash and its libraries under /usr, and the /lib, /lib64 links its
		// loader path goes through; /bin stays the busybox directory.
		if f.Path == "/lib" || f.Path == "/lib64" || strings.HasPrefix(f.Path, "/usr/") {
			files = append(files, f)
		}
	}
	p, err := exec.LookPath("bash")
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return nil, err
	}
	return append(files, oci.File{Path: "/bin/sh", Link: ".." + real}), nil
}
