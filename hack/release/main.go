package main

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/plinth-dev/plinth/hack/image/debian"
	"github.com/plinth-dev/plinth/hack/release/archive"
	"github.com/plinth-dev/plinth/hack/release/krew"
	"github.com/plinth-dev/plinth/hack/release/sbom"
	"github.com/plinth-dev/plinth/hack/release/version"
)

// Platforms of kubectl-plinth; plinth itself is built for linux only.
var (
	plugins = [][2]string{{"linux", "amd64"}, {"linux", "arm64"}, {"darwin", "amd64"}, {"darwin", "arm64"}}
	images  = []string{"amd64", "arm64"}
)

func main() {
	check := flag.String("check", "", "only check that this is a release version")
	ver := flag.String("version", "", "the release's version, vMAJOR.MINOR.PATCH[-pre]")
	epoch := flag.Int64("epoch", 0, "the commit's time (SOURCE_DATE_EPOCH): archive and SBOM dates")
	bin := flag.String("bin", "_out/release-build", "the cross-compiled binaries")
	out := flag.String("out", "_out/release", "the release directory")
	lock := flag.String("lock", "hack/image/debian.lock", "the image's pinned Debian packages")
	license := flag.String("license", "LICENSE", "the licence file packed with kubectl-plinth")
	chart := flag.String("chart", "", "the packaged chart in --out, repacked with its entries dated --epoch")
	flag.Parse()
	if *check != "" || *ver == "" {
		if err := version.Check(*check + *ver); err != nil {
			fmt.Fprintln(os.Stderr, "release:", err)
			os.Exit(1)
		}
		if *check != "" {
			return
		}
	}
	if *chart != "" {
		if err := archive.Repack(*chart, time.Unix(*epoch, 0).UTC()); err != nil {
			fmt.Fprintln(os.Stderr, "release:", err)
			os.Exit(1)
		}
	}
	if err := run(*ver, time.Unix(*epoch, 0).UTC(), *bin, *out, *lock, *license); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

func run(ver string, created time.Time, bin, out, lockPath, license string) error {
	if err := version.Check(ver); err != nil {
		return err
	}
	lic, err := os.ReadFile(license)
	if err != nil {
		return err
	}
	base := krew.ReleaseURL + "/" + ver + "/"
	var archives []krew.Archive
	for _, p := range plugins {
		name := fmt.Sprintf("kubectl-plinth_%s_%s", p[0], p[1])
		b, err := os.ReadFile(filepath.Join(bin, name))
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := archive.TarGz(&buf, []archive.File{{Name: "kubectl-plinth", Mode: 0o755, Content: b}, {Name: "LICENSE", Mode: 0o644, Content: lic}}, created); err != nil {
			return err
		}
		file := fmt.Sprintf("kubectl-plinth_%s_%s_%s.tar.gz", ver, p[0], p[1])
		if err := os.WriteFile(filepath.Join(out, file), buf.Bytes(), 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(buf.Bytes())
		archives = append(archives, krew.Archive{OS: p[0], Arch: p[1], File: file, SHA256: hex.EncodeToString(sum[:])})
		if err := binarySBOM(filepath.Join(bin, name), name, ver, base, created, out); err != nil {
			return err
		}
	}
	m, err := krew.Manifest(ver, archives)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "plinth.yaml"), m, 0o644); err != nil {
		return err
	}
	lock, err := debian.ReadLock(lockPath)
	if err != nil {
		return err
	}
	img := sbom.New("plinth-image-"+ver, base+"plinth-image.spdx.json", created)
	for _, arch := range images {
		name := "plinth_linux_" + arch
		if err := binarySBOM(filepath.Join(bin, name), name, ver, base, created, out); err != nil {
			return err
		}
		info, err := buildinfo.ReadFile(filepath.Join(bin, name))
		if err != nil {
			return err
		}
		root := img.Describe("plinth-image linux/"+arch, ver, "CONTAINER", "")
		img.AddGo(root, info, ver)
		pkgs := lock.For(arch)
		if len(pkgs) == 0 {
			return fmt.Errorf("%s pins no packages for %s", lockPath, arch)
		}
		img.AddDebian(root, debian.Mirror, pkgs)
	}
	if err := writeJSON(img, filepath.Join(out, "plinth-image.spdx.json")); err != nil {
		return err
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && e.Name() != "SHA256SUMS" {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	sums, err := archive.SHA256Sums(out, names)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "SHA256SUMS"), sums, 0o644); err != nil {
		return err
	}
	fmt.Print(string(sums))
	return nil
}

// binarySBOM writes <name>.spdx.json: the Go modules in the binary at path.
func binarySBOM(path, name, ver, base string, created time.Time, out string) error {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("build information of %s: %w", path, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	d := sbom.New(name+"-"+ver, base+name+".spdx.json", created)
	root := d.Describe(name, ver, "APPLICATION", hex.EncodeToString(sum[:]))
	d.AddGo(root, info, ver)
	return writeJSON(d, filepath.Join(out, name+".spdx.json"))
}

func writeJSON(d *sbom.Document, path string) error {
	b, err := d.JSON()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
