package app

import (
	"path/filepath"
	"testing"
)

// FuzzParsePoolSpec: an accepted --pool names an absolute, clean directory.
func FuzzParsePoolSpec(f *testing.F) {
	f.Add("name=fast,backend=file,dir=/mnt/fast")
	f.Add("name=a,backend=btrfs,dir=/mnt/../x")
	f.Add("name=,dir=")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePoolSpec(s)
		if err != nil {
			return
		}
		if !filepath.IsAbs(p.Dir) || filepath.Clean(p.Dir) != p.Dir || p.Validate() != nil {
			t.Fatalf("accepted %q: %+v", s, p)
		}
	})
}
