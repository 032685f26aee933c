package volume

import (
	"testing"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// FuzzParseParams: StorageClass parameters never panic the parser, and an
// accepted pool name is a valid pool name.
func FuzzParseParams(f *testing.F) {
	f.Add("pool", "fast")
	f.Add("pool", "../etc")
	f.Add("provisioning", "thick")
	f.Add("backend", "btrfs")
	f.Add("csi.storage.k8s.io/fstype", "xfs")
	f.Fuzz(func(t *testing.T, k, v string) {
		p, err := ParseParams(map[string]string{k: v})
		if err != nil {
			return
		}
		if p.Pool != "" && pool.ValidateName(p.Pool) != nil {
			t.Fatalf("accepted pool %q", p.Pool)
		}
		if p.Backend != "" && p.Backend != "file" && p.Backend != "btrfs" {
			t.Fatalf("accepted backend %q", p.Backend)
		}
	})
}

// FuzzSize: a decided size is within the range asked for and aligned.
func FuzzSize(f *testing.F) {
	f.Add(int64(0), int64(0), "ext4")
	f.Add(int64(5000), int64(8192), "")
	f.Add(int64(1<<40), int64(0), "xfs")
	f.Fuzz(func(t *testing.T, req, lim int64, fs string) {
		size, err := Size(req, lim, pool.ModeFilesystem, fs)
		if err != nil {
			return
		}
		if size < req || lim > 0 && size > lim || size%4096 != 0 || size <= 0 || size > MaxSize+4096 {
			t.Fatalf("Size(%d, %d, %q) = %d", req, lim, fs, size)
		}
	})
}
