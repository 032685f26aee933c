// Package oci assembles plinth's OCI image without a Docker engine: the
// static plinth binary and the filesystem tools plinth node runs (with
// their shared libraries) taken from this Debian machine, the same set the
// Dockerfile installs. Images are written as tarballs that `ctr images
// import` and `docker load` take, or pushed to a registry.
//
// It is build tooling, not part of the product: plinth never imports it.
// Two programs share it, the image command beside it (make image, make
// push) and the end-to-end suite (test/e2e), which builds the same image
// and its test images in process.
package oci
