// Command release makes the files of a plinth release that the Makefile
// does not (make release VERSION=vX.Y.Z): from the cross-compiled binaries
// in --bin (plinth_linux_{amd64,arm64},
// kubectl-plinth_{linux,darwin}_{amd64,arm64}) it writes into --out
//
//   - kubectl-plinth_<version>_<os>_<arch>.tar.gz (the binary and LICENSE;
//     the same bytes on every build of one commit: package archive),
//   - plinth.yaml, kubectl-plinth's krew plugin manifest (package krew),
//   - <binary>_<os>_<arch>.spdx.json, an SPDX 2.3 bill of materials of the
//     Go modules in each binary, and plinth-image.spdx.json, of the image
//     per architecture: the Debian packages the lock pins and plinth's Go
//     modules (package sbom),
//   - SHA256SUMS of every file in --out, written last.
//
// The Makefile writes the image index (hack/image) and the chart (helm
// package) into --out before; --chart names the chart, which is repacked
// with its entries dated --epoch (helm dates them when it runs), so every
// file of a release is the same bytes on every build of one commit.
// `release -check VERSION` only checks the
// version (package version).
//
//	go run ./hack/release -check v0.1.0
//	go run ./hack/release -version v0.1.0 -epoch 1700000000 -bin DIR -out DIR
package main
