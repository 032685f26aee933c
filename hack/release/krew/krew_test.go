package krew

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

func TestManifest(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	b, err := Manifest("v0.1.0", []Archive{
		{OS: "linux", Arch: "amd64", File: "kubectl-plinth_v0.1.0_linux_amd64.tar.gz", SHA256: sum},
		{OS: "darwin", Arch: "arm64", File: "kubectl-plinth_v0.1.0_darwin_arm64.tar.gz", SHA256: sum},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["apiVersion"] != "krew.googlecontainertools.github.com/v1alpha2" || got["kind"] != "Plugin" {
		t.Errorf("header: %v %v", got["apiVersion"], got["kind"])
	}
	spec := got["spec"].(map[string]any)
	if spec["version"] != "v0.1.0" {
		t.Errorf("version %v", spec["version"])
	}
	plats := spec["platforms"].([]any)
	want := map[string]any{
		"selector": map[string]any{"matchLabels": map[string]any{"os": "darwin", "arch": "arm64"}},
		"uri":      "https://github.com/plinth-dev/plinth/releases/download/v0.1.0/kubectl-plinth_v0.1.0_darwin_arm64.tar.gz",
		"sha256":   sum,
		"bin":      "kubectl-plinth",
		"files":    []any{map[string]any{"from": "kubectl-plinth", "to": "."}, map[string]any{"from": "LICENSE", "to": "."}},
	}
	if len(plats) != 2 {
		t.Fatalf("%d platforms", len(plats))
	}
	if d := cmp.Diff(want, plats[1]); d != "" {
		t.Errorf("platform (-want +got):\n%s", d)
	}
	if _, err := Manifest("v0.1.0", []Archive{{OS: "linux", Arch: "amd64", File: "x", SHA256: "short"}}); err == nil {
		t.Error("a bad sha256 was accepted")
	}
}
