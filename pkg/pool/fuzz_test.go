package pool

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzValidateID: an accepted ID is one path element that stays inside
// the directory it is joined to.
func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"pv-0123", "..", "a/../b", "a\x00", "-x", "x-", strings.Repeat("a", 65), "fake-vol-id-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateID("id", id) != nil {
			return
		}
		base := "/pool/volumes"
		p := filepath.Join(base, id+".img")
		if filepath.Dir(p) != base || strings.ContainsAny(id, "/\x00.") || id == "" {
			t.Fatalf("accepted %q escapes or is not one element: %s", id, p)
		}
	})
}
