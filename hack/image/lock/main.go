// Command lock pins the Debian 12 packages plinth's image takes its
// filesystem tools from (make image-lock): for each architecture it reads
// the main Packages index of bookworm, bookworm-updates and
// bookworm-security from deb.debian.org (each checked against its suite's
// InRelease, verified by gpgv with Debian's archive keyring), takes the
// newest version of each package, resolves the closure of Depends and
// Pre-Depends of the packages the Dockerfile installs, and writes the lock
// (hack/image/debian.lock) that make image builds from.
//
//	go run ./hack/image/lock [--out hack/image/debian.lock] [--arch amd64,arm64]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/plinth-dev/plinth/hack/image/debian"
)

// Roots are the packages the Dockerfile installs: the tools plinth node
// runs (oci.NodeTools).
var Roots = []string{"e2fsprogs", "xfsprogs", "btrfs-progs", "util-linux", "mount"}

// Exclude are packages an image that never runs dpkg, a shell, Perl,
// Python or PAM does not need: the package manager and its maintainer
// script helpers, and interpreters only optional scripts use. A
// dependency on one of them counts as met.
var Exclude = []string{
	"debconf", "debconf-2.0", "cdebconf", "dpkg", "perl-base", "init-system-helpers", "sysvinit-utils",
	"lsb-base", "libpam-runtime", "libpam-modules", "libpam-modules-bin", "python3", "install-info",
	"base-files", "adduser", "passwd", "login",
}

func main() {
	out := flag.String("out", "hack/image/debian.lock", "the lock file to write")
	archs := flag.String("arch", "amd64,arm64", "architectures, comma-separated")
	mirror := flag.String("mirror", debian.Mirror, "the Debian mirror")
	keyring := flag.String("keyring", debian.Keyring, "the keyring gpgv checks InRelease with")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *out, strings.Split(*archs, ","), *mirror, *keyring); err != nil {
		fmt.Fprintln(os.Stderr, "image-lock:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out string, archs []string, mirror, keyring string) error {
	lock := &debian.Lock{Roots: Roots}
	for _, arch := range archs {
		var lists [][]debian.Package
		for _, s := range debian.Bookworm {
			pkgs, err := debian.FetchIndex(ctx, mirror, s, arch, keyring)
			if err != nil {
				return err
			}
			lists = append(lists, pkgs)
		}
		pkgs, err := debian.Resolve(debian.NewIndex(lists...), Roots, Exclude)
		if err != nil {
			return fmt.Errorf("%s: %w", arch, err)
		}
		for _, p := range pkgs {
			lock.Packages = append(lock.Packages, debian.Locked{Arch: arch, Package: p})
		}
		fmt.Printf("%s: %d packages\n", arch, len(pkgs))
	}
	var buf bytes.Buffer
	if err := lock.Write(&buf); err != nil {
		return err
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s\n", out)
	return nil
}
