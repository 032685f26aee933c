// Package sbom writes software bills of materials as SPDX 2.3 JSON: the Go
// modules a binary was built from (its debug/buildinfo: the main module,
// every dependency with its version and go.sum checksum, the Go toolchain)
// and the Debian packages an image holds (from hack/image/debian.lock).
package sbom

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"runtime/debug"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/hack/image/debian"
)

// Document is an SPDX 2.3 document.
type Document struct {
	SPDXVersion       string         `json:"spdxVersion"`
	DataLicense       string         `json:"dataLicense"`
	SPDXID            string         `json:"SPDXID"`
	Name              string         `json:"name"`
	DocumentNamespace string         `json:"documentNamespace"`
	CreationInfo      CreationInfo   `json:"creationInfo"`
	Packages          []Package      `json:"packages"`
	Relationships     []Relationship `json:"relationships"`
	ids               map[string]bool
}

// CreationInfo says who made the document and when.
type CreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

// Package is an SPDX package.
type Package struct {
	Name                  string        `json:"name"`
	SPDXID                string        `json:"SPDXID"`
	VersionInfo           string        `json:"versionInfo,omitempty"`
	Supplier              string        `json:"supplier,omitempty"`
	DownloadLocation      string        `json:"downloadLocation"`
	FilesAnalyzed         bool          `json:"filesAnalyzed"`
	Checksums             []Checksum    `json:"checksums,omitempty"`
	LicenseConcluded      string        `json:"licenseConcluded"`
	LicenseDeclared       string        `json:"licenseDeclared"`
	CopyrightText         string        `json:"copyrightText"`
	PrimaryPackagePurpose string        `json:"primaryPackagePurpose,omitempty"`
	Comment               string        `json:"comment,omitempty"`
	ExternalRefs          []ExternalRef `json:"externalRefs,omitempty"`
}

// Checksum is a package's digest.
type Checksum struct {
	Algorithm     string `json:"algorithm"`
	ChecksumValue string `json:"checksumValue"`
}

// ExternalRef is a package URL.
type ExternalRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

// Relationship relates two SPDX elements.
type Relationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

// New is an empty document named name, created at created (the commit's
// time: the same commit gives the same document).
func New(name, namespace string, created time.Time) *Document {
	return &Document{
		SPDXVersion: "SPDX-2.3", DataLicense: "CC0-1.0", SPDXID: "SPDXRef-DOCUMENT", Name: name,
		DocumentNamespace: namespace,
		CreationInfo:      CreationInfo{Created: created.UTC().Format(time.RFC3339), Creators: []string{"Organization: plinth", "Tool: plinth-hack-release"}},
		ids:               map[string]bool{"SPDXRef-DOCUMENT": true},
	}
}

var unsafeID = regexp.MustCompile(`[^A-Za-z0-9.-]+`)

func (d *Document) add(p Package, kind string) string {
	base := "SPDXRef-" + kind + "-" + strings.Trim(unsafeID.ReplaceAllString(p.Name+"-"+p.VersionInfo, "-"), "-")
	id := base
	for i := 2; d.ids[id]; i++ {
		id = fmt.Sprintf("%s-%d", base, i)
	}
	d.ids[id] = true
	p.SPDXID = id
	if p.LicenseConcluded == "" {
		p.LicenseConcluded = "NOASSERTION"
	}
	if p.LicenseDeclared == "" {
		p.LicenseDeclared = "NOASSERTION"
	}
	if p.CopyrightText == "" {
		p.CopyrightText = "NOASSERTION"
	}
	if p.DownloadLocation == "" {
		p.DownloadLocation = "NOASSERTION"
	}
	d.Packages = append(d.Packages, p)
	return id
}

func (d *Document) relate(a, typ, b string) {
	d.Relationships = append(d.Relationships, Relationship{Element: a, Type: typ, Related: b})
}

// Describe adds the document's subject (a binary, an image) and returns its ID.
func (d *Document) Describe(name, version, purpose, sha256 string) string {
	p := Package{Name: name, VersionInfo: version, PrimaryPackagePurpose: purpose, Supplier: "Organization: plinth"}
	if sha256 != "" {
		p.Checksums = []Checksum{{"SHA256", sha256}}
	}
	id := d.add(p, strings.ToLower(purpose))
	d.relate("SPDXRef-DOCUMENT", "DESCRIBES", id)
	return id
}

func goPURL(path, version string) string {
	return "pkg:golang/" + path + "@" + version
}

// h1 turns a go.sum hash (h1:base64 of SHA-256) into SPDX's hex SHA256, as
// other SPDX writers for Go do.
func h1(sum string) []Checksum {
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sum, "h1:"))
	if !strings.HasPrefix(sum, "h1:") || err != nil || len(b) != 32 {
		return nil
	}
	return []Checksum{{"SHA256", hex.EncodeToString(b)}}
}

// AddGo adds what a Go binary was built from (its build information) as
// contained in parent: the main module at version (the release's; the
// toolchain stamps (devel) on a local build), the Go standard library at
// the toolchain's version, and each dependency with its version and
// go.sum checksum (h1:, in the comment; its SHA-256 as the checksum).
func (d *Document) AddGo(parent string, info *debug.BuildInfo, version string) {
	main := d.add(Package{Name: info.Main.Path, VersionInfo: version, Supplier: "Organization: plinth",
		DownloadLocation: "https://" + info.Main.Path, LicenseDeclared: "Apache-2.0",
		ExternalRefs: []ExternalRef{{"PACKAGE-MANAGER", "purl", goPURL(info.Main.Path, version)}}}, "go-module")
	d.relate(parent, "CONTAINS", main)
	gv := strings.TrimPrefix(info.GoVersion, "go")
	std := d.add(Package{Name: "stdlib", VersionInfo: info.GoVersion, DownloadLocation: "https://go.dev/dl/",
		LicenseDeclared: "BSD-3-Clause", Comment: "the Go toolchain's standard library (" + info.GoVersion + ")",
		ExternalRefs: []ExternalRef{{"PACKAGE-MANAGER", "purl", goPURL("stdlib", gv)}}}, "go-module")
	d.relate(main, "DEPENDS_ON", std)
	for _, dep := range info.Deps {
		m := dep
		comment := ""
		if dep.Replace != nil {
			m = dep.Replace
			comment = "replaces " + dep.Path + " " + dep.Version + "; "
		}
		p := Package{Name: m.Path, VersionInfo: m.Version, DownloadLocation: "https://proxy.golang.org/" + strings.ToLower(m.Path) + "/@v/" + m.Version + ".zip",
			Checksums: h1(m.Sum), Comment: comment + "go.sum " + m.Sum,
			ExternalRefs: []ExternalRef{{"PACKAGE-MANAGER", "purl", goPURL(m.Path, m.Version)}}}
		d.relate(main, "DEPENDS_ON", d.add(p, "go-module"))
	}
}

// AddDebian adds the pinned Debian packages as contained in parent.
func (d *Document) AddDebian(parent, mirror string, pkgs []debian.Locked) {
	for _, p := range pkgs {
		comment := "Debian 12 (bookworm) package for " + p.Arch
		if p.Source != "" {
			comment += ", built from source package " + p.Source
		}
		id := d.add(Package{Name: p.Name, VersionInfo: p.Version, Supplier: "Organization: Debian",
			DownloadLocation: p.URL(mirror), Checksums: []Checksum{{"SHA256", p.SHA256}}, Comment: comment,
			ExternalRefs: []ExternalRef{{"PACKAGE-MANAGER", "purl", p.PURL()}}}, "deb")
		d.relate(parent, "CONTAINS", id)
	}
}

// JSON is the document, indented.
func (d *Document) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
