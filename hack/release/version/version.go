// Package version checks a release's version (vMAJOR.MINOR.PATCH with an
// optional -prerelease, semantic versioning's form) and derives the
// chart's version from it.
package version

import (
	"fmt"
	"regexp"
	"strings"
)

var re = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?$`)

// Check refuses a version that is not vMAJOR.MINOR.PATCH[-pre].
func Check(v string) error {
	if !re.MatchString(v) {
		return fmt.Errorf("VERSION=%q is not a release version: give vMAJOR.MINOR.PATCH or vMAJOR.MINOR.PATCH-PRERELEASE (e.g. make release VERSION=v0.1.0 or VERSION=v0.1.0-rc.1)", v)
	}
	return nil
}

// Chart is the chart's version for release v: v without its leading v
// (Helm's versions are bare semantic versions).
func Chart(v string) string { return strings.TrimPrefix(v, "v") }
