package buildinfo

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Commit is the commit a binary was built from: stamped where the build
// stamped it, else the Go toolchain's VCS stamp of bi (nil: none; -dirty
// where the tree had changes), else "unknown". The toolchain stamps
// nothing where the source has no .git (a Docker build context) or git
// refused it.
func Commit(stamped string, bi *debug.BuildInfo) string {
	if stamped != "" {
		return stamped
	}
	commit, dirty := "", false
	if bi != nil {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	switch {
	case commit == "":
		return "unknown"
	case dirty:
		return commit + "-dirty"
	}
	return commit
}

// Print writes the lines every plinth binary's version starts with:
// "NAME VERSION", "commit: COMMIT" (Commit of stamped and this binary's
// build information) and "go: VERSION OS/ARCH".
func Print(w io.Writer, name, version, stamped string) {
	bi, _ := debug.ReadBuildInfo()
	fmt.Fprintf(w, "%s %s\n", name, version)
	fmt.Fprintf(w, "commit: %s\n", Commit(stamped, bi))
	fmt.Fprintf(w, "go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
