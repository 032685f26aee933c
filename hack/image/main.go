// Command image builds plinth's OCI image without a Docker engine (make
// image, make push): the given plinth binary at /usr/bin/plinth and the
// filesystem tools plinth node runs, with their libraries, from this Debian
// machine (hack/image/oci) — the content the Dockerfile installs. It writes a
// tarball that `ctr -n k8s.io images import` and `docker load` take, or
// pushes to a registry with the credentials of ~/.docker/config.json.
//
//	go run ./hack/image --plinth bin/plinth --tag REPO:TAG [--tag ...] --out FILE
//	go run ./hack/image --plinth bin/plinth --tag REPO:TAG --push
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/plinth-dev/plinth/hack/image/oci"
)

type tags []string

func (t *tags) String() string     { return strings.Join(*t, ",") }
func (t *tags) Set(v string) error { *t = append(*t, v); return nil }

func main() {
	var refs tags
	bin := flag.String("plinth", "bin/plinth", "the plinth binary (static; make build)")
	out := flag.String("out", "", "write the image as a tarball here")
	push := flag.Bool("push", false, "push the image to each --tag's registry")
	version := flag.String("version", "dev", "org.opencontainers.image.version")
	revision := flag.String("revision", "", "org.opencontainers.image.revision (the commit)")
	flag.Var(&refs, "tag", "image reference REPO:TAG (repeatable; the first names the image)")
	flag.Parse()
	if err := run(*bin, refs, *out, *push, *version, *revision); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(bin string, refs []string, out string, push bool, version, revision string) error {
	if len(refs) == 0 || (out == "" && !push) {
		return fmt.Errorf("need --tag and --out or --push")
	}
	tools, err := oci.HostTools(oci.NodeTools)
	if err != nil {
		return err
	}
	p, err := oci.Binary(bin, "/usr/bin/plinth")
	if err != nil {
		return err
	}
	labels := map[string]string{
		"org.opencontainers.image.title":       "plinth",
		"org.opencontainers.image.description": "Node-local disks as CSI volumes, accelerators as extended resources",
		"org.opencontainers.image.source":      "https://github.com/plinth-dev/plinth",
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.version":     version,
	}
	if revision != "" {
		labels["org.opencontainers.image.revision"] = revision
	}
	spec := oci.Spec{Ref: refs[0], Entrypoint: []string{"/usr/bin/plinth"}, Files: append(tools, p), Labels: labels}
	if out != "" {
		if err := oci.Write(spec, out, refs[1:]...); err != nil {
			return err
		}
		fmt.Printf("wrote %s (%s)\n", out, strings.Join(refs, ", "))
	}
	if push {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		for _, r := range refs {
			spec.Ref = r
			if err := oci.Push(ctx, spec); err != nil {
				return err
			}
			fmt.Printf("pushed %s\n", r)
		}
	}
	return nil
}
