// Package rootfs assembles the filesystem of plinth's image for one
// architecture from the Debian packages the lock pins (hack/image/debian):
// the programs plinth node runs (oci.NodeTools), every shared library they
// load (their ELF DT_NEEDED entries and program interpreter, followed
// through the packages' files), /etc/mke2fs.conf, and each pinned
// package's /usr/share/doc/<package>/copyright, laid out merged-/usr as
// Debian 12 installs them (/bin, /sbin, /lib, /lib64 link into /usr).
//
// It is build tooling, not part of the product: plinth never imports it.
package rootfs
