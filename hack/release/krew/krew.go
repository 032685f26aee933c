// Package krew writes kubectl-plinth's krew plugin manifest
// (krew.googlecontainertools.github.com/v1alpha2 Plugin): one platform
// per release archive, each with its selector, download URI, SHA-256 and
// the binary krew links as `kubectl plinth`.
package krew

import (
	"fmt"

	"sigs.k8s.io/yaml"
)

// ReleaseURL is where a release's files are downloaded from.
const ReleaseURL = "https://github.com/plinth-dev/plinth/releases/download"

// Archive is one release archive of kubectl-plinth.
type Archive struct {
	OS, Arch string // linux, darwin; amd64, arm64
	File     string // its name among the release's files
	SHA256   string // hex
}

type plugin struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   metadata `json:"metadata"`
	Spec       spec     `json:"spec"`
}

type metadata struct {
	Name string `json:"name"`
}

type spec struct {
	Version          string     `json:"version"`
	Homepage         string     `json:"homepage"`
	ShortDescription string     `json:"shortDescription"`
	Description      string     `json:"description"`
	Platforms        []platform `json:"platforms"`
}

type platform struct {
	Selector selector `json:"selector"`
	URI      string   `json:"uri"`
	SHA256   string   `json:"sha256"`
	Files    []file   `json:"files"`
	Bin      string   `json:"bin"`
}

type selector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

type file struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Manifest is the plugin manifest (plinth.yaml) for release version.
func Manifest(version string, archives []Archive) ([]byte, error) {
	if len(archives) == 0 {
		return nil, fmt.Errorf("krew manifest: no archives")
	}
	p := plugin{
		APIVersion: "krew.googlecontainertools.github.com/v1alpha2",
		Kind:       "Plugin",
		Metadata:   metadata{Name: "plinth"},
		Spec: spec{
			Version:          version,
			Homepage:         "https://github.com/plinth-dev/plinth",
			ShortDescription: "Show plinth's local volumes, pools and devices",
			Description: "kubectl plinth shows what plinth (node-local disks as CSI volumes, accelerators as\n" +
				"extended resources) knows of a cluster: nodes, pools, volumes, devices and disks,\n" +
				"a status summary, and why a PVC or a pod is pending.\n",
		},
	}
	for _, a := range archives {
		if len(a.SHA256) != 64 {
			return nil, fmt.Errorf("krew manifest: %s: bad sha256 %q", a.File, a.SHA256)
		}
		p.Spec.Platforms = append(p.Spec.Platforms, platform{
			Selector: selector{MatchLabels: map[string]string{"os": a.OS, "arch": a.Arch}},
			URI:      fmt.Sprintf("%s/%s/%s", ReleaseURL, version, a.File),
			SHA256:   a.SHA256,
			Files:    []file{{From: "kubectl-plinth", To: "."}, {From: "LICENSE", To: "."}},
			Bin:      "kubectl-plinth",
		})
	}
	return yaml.Marshal(p)
}
