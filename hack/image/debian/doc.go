// Package debian pins and fetches the Debian 12 (bookworm) packages that
// plinth's image takes its filesystem tools from: it reads a suite's
// Packages index (checked against the suite's InRelease, whose signature
// gpgv verifies with Debian's archive keyring), orders versions as dpkg
// does, resolves the closure of Depends and Pre-Depends from a set of root
// packages, writes and reads the lock file (hack/image/debian.lock), and
// downloads each pinned .deb by its pool path into a cache, checking its
// SHA-256, and reads its files (dpkg-deb --fsys-tarfile).
//
// It is build tooling, not part of the product: plinth never imports it.
package debian
