// Package buildinfo says which build a binary is: the version and commit
// the Makefile stamps (-ldflags "-X main.version=... -X main.commit=..."),
// else the commit the Go toolchain stamped, and the Go it was built with.
package buildinfo
