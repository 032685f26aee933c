// Package oci assembles OCI images without a Docker engine: one layer of
// files in a fixed order, every entry and the image itself dated one time
// (Spec.Created: the commit's, so one commit gives one digest), for one
// architecture (Spec.Arch); an OCI image index of several (Index); written
// as a tarball that `ctr images import` and `docker load` take (Write), as
// an OCI image layout tarball (WriteLayout, ReadLayout), or pushed to a
// registry (Push, PushIndex).
//
// plinth's own image takes its files from pinned Debian packages
// (hack/image/rootfs). HostTools takes programs and their libraries from
// the machine that runs it instead: the end-to-end suite's in-process
// images use it.
//
// It is build tooling, not part of the product: plinth never imports it.
// Programs that share it: the image command beside it (make image, make
// push, make release) and the end-to-end suite (test/e2e), which builds
// its test images in process.
package oci
