package buildinfo

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

func TestCommit(t *testing.T) {
	vcs := func(settings ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{}
		for i := 0; i < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi
	}
	for name, tc := range map[string]struct {
		stamped string
		bi      *debug.BuildInfo
		want    string
	}{
		"stamped":                 {"abc123", vcs("vcs.revision", "def456"), "abc123"},
		"stamped dirty":           {"abc123-dirty", nil, "abc123-dirty"},
		"toolchain's stamp":       {"", vcs("vcs", "git", "vcs.revision", "def456", "vcs.modified", "false"), "def456"},
		"toolchain's, modified":   {"", vcs("vcs.revision", "def456", "vcs.modified", "true"), "def456-dirty"},
		"no stamp (-trimpath...)": {"", vcs("-trimpath", "true"), "unknown"},
		"no build information":    {"", nil, "unknown"},
	} {
		if got := Commit(tc.stamped, tc.bi); got != tc.want {
			t.Errorf("%s: Commit = %q, want %q", name, got, tc.want)
		}
	}
}

func TestPrint(t *testing.T) {
	var b bytes.Buffer
	Print(&b, "plinth", "v1.2.3", "abc123")
	lines := strings.Split(b.String(), "\n")
	if len(lines) != 4 || lines[0] != "plinth v1.2.3" || lines[1] != "commit: abc123" || !strings.HasPrefix(lines[2], "go: go1.") || lines[3] != "" {
		t.Errorf("Print:\n%s", b.String())
	}
}
