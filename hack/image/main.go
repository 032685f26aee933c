// Command image builds plinth's OCI image without a Docker engine (make
// image, make push, make release): a plinth binary at /usr/bin/plinth and
// the filesystem tools plinth node runs, with their libraries and their
// packages' copyright files, from the Debian 12 packages that
// hack/image/debian.lock pins for each architecture (hack/image/rootfs;
// make image-lock writes the lock). Every file is dated SOURCE_DATE_EPOCH
// (--epoch), so two builds of one commit give one digest.
//
// One binary (--plinth PATH, or ARCH=PATH) gives a single-architecture
// image, written as a tarball that `ctr -n k8s.io images import` and
// `docker load` take (--out). Several (--plinth amd64=... --plinth
// arm64=...) give an OCI image index, written as an OCI image layout
// tarball (--oci-out) or pushed (--push). --push-oci pushes an index a
// layout tarball holds. Pushes use the credentials of ~/.docker/config.json.
//
//	go run ./hack/image --plinth bin/plinth --tag REPO:TAG [--tag ...] --out FILE
//	go run ./hack/image --plinth amd64=A --plinth arm64=B --tag REPO:TAG --oci-out FILE
//	go run ./hack/image --plinth amd64=A --plinth arm64=B --tag REPO:TAG --push
//	go run ./hack/image --push-oci FILE --tag REPO:TAG
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/hack/image/debian"
	"github.com/plinth-dev/plinth/hack/image/oci"
	"github.com/plinth-dev/plinth/hack/image/rootfs"
)

type list []string

func (t *list) String() string     { return strings.Join(*t, ",") }
func (t *list) Set(v string) error { *t = append(*t, v); return nil }

type options struct {
	refs, bins           list
	out, ociOut, pushOCI string
	push                 bool
	version, revision    string
	lock, cache, mirror  string
	epoch                int64
}

func main() {
	var o options
	flag.Var(&o.bins, "plinth", "a static plinth binary, PATH (this machine's architecture) or ARCH=PATH (repeatable)")
	flag.Var(&o.refs, "tag", "image reference REPO:TAG (repeatable; the first names the image)")
	flag.StringVar(&o.out, "out", "", "write the single-architecture image as a tarball (ctr import, docker load) here")
	flag.StringVar(&o.ociOut, "oci-out", "", "write the image index as an OCI image layout tarball here")
	flag.BoolVar(&o.push, "push", false, "push the image index to each --tag")
	flag.StringVar(&o.pushOCI, "push-oci", "", "push the index of this OCI image layout tarball to each --tag")
	flag.StringVar(&o.version, "version", "dev", "org.opencontainers.image.version")
	flag.StringVar(&o.revision, "revision", "", "org.opencontainers.image.revision (the commit)")
	flag.StringVar(&o.lock, "lock", "hack/image/debian.lock", "the Debian packages, pinned (make image-lock)")
	flag.StringVar(&o.cache, "cache", "", "where fetched .debs are kept (default ~/.cache/plinth/debs)")
	flag.StringVar(&o.mirror, "mirror", debian.Mirror, "the Debian mirror")
	def, _ := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
	flag.Int64Var(&o.epoch, "epoch", def, "the time of every file and of the image (seconds; SOURCE_DATE_EPOCH)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if len(o.refs) == 0 {
		return fmt.Errorf("need --tag")
	}
	if o.pushOCI != "" {
		idx, cleanup, err := oci.ReadLayout(o.pushOCI)
		if err != nil {
			return err
		}
		defer cleanup()
		return pushAll(ctx, o.refs, func(r string) error { return oci.PushIndex(ctx, idx, r) })
	}
	if o.out == "" && o.ociOut == "" && !o.push {
		return fmt.Errorf("need --out, --oci-out or --push")
	}
	if len(o.bins) == 0 {
		return fmt.Errorf("need --plinth")
	}
	if o.out != "" && len(o.bins) != 1 {
		return fmt.Errorf("--out writes one architecture's image: give one --plinth")
	}
	if o.cache == "" {
		c, err := debian.DefaultCache()
		if err != nil {
			return err
		}
		o.cache = c
	}
	lock, err := debian.ReadLock(o.lock)
	if err != nil {
		return err
	}
	created := time.Unix(o.epoch, 0).UTC()
	labels := map[string]string{
		"org.opencontainers.image.title":       "plinth",
		"org.opencontainers.image.description": "Node-local disks as CSI volumes, accelerators as extended resources",
		"org.opencontainers.image.source":      "https://github.com/plinth-dev/plinth",
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.version":     o.version,
		"org.opencontainers.image.created":     created.Format(time.RFC3339),
	}
	if o.revision != "" {
		labels["org.opencontainers.image.revision"] = o.revision
	}
	var specs []oci.Spec
	for _, b := range o.bins {
		arch, bin, ok := strings.Cut(b, "=")
		if !ok {
			arch, bin = runtime.GOARCH, b
		}
		tools, err := rootfs.Build(ctx, rootfs.Config{Arch: arch, Packages: lock.For(arch), Tools: oci.NodeTools, Mirror: o.mirror, Cache: o.cache})
		if err != nil {
			return fmt.Errorf("%s: %w", arch, err)
		}
		p, err := oci.Binary(bin, "/usr/bin/plinth")
		if err != nil {
			return err
		}
		specs = append(specs, oci.Spec{Ref: o.refs[0], Arch: arch, Created: created, Entrypoint: []string{"/usr/bin/plinth"},
			Files: append(tools, p), Labels: labels})
	}
	if o.out != "" {
		if err := oci.Write(specs[0], o.out, o.refs[1:]...); err != nil {
			return err
		}
		img, err := oci.Image(specs[0])
		if err != nil {
			return err
		}
		d, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s: linux/%s image %s (%s)\n", o.out, specs[0].Arch, d, strings.Join(o.refs, ", "))
	}
	if o.ociOut == "" && !o.push {
		return nil
	}
	idx, err := oci.Index(specs)
	if err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	if o.ociOut != "" {
		if err := oci.WriteLayout(idx, o.refs[0], created, o.ociOut); err != nil {
			return err
		}
		fmt.Printf("wrote %s: image index %s (%s)\n", o.ociOut, d, o.refs[0])
	}
	if o.push {
		return pushAll(ctx, o.refs, func(r string) error { return oci.PushIndex(ctx, idx, r) })
	}
	return nil
}

func pushAll(ctx context.Context, refs []string, push func(string) error) error {
	for _, r := range refs {
		if err := push(r); err != nil {
			return err
		}
		fmt.Printf("pushed %s\n", r)
	}
	return nil
}
