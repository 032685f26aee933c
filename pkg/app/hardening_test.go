package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// What a careless administrator can give plinth as its root and pools,
// found by a hostile trial: each is refused at start, before anything on
// disk changes.

// A pool at one of plinth's own state directories was emptied at the
// first start after a reboot (targets and staged records are dropped).
func TestPoolInPlinthsStateRefused(t *testing.T) {
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	os.MkdirAll(filepath.Join(root, "targets"), 0o750)
	link := filepath.Join(tmp, "link-to-targets")
	os.Symlink(filepath.Join(root, "targets"), link)
	for name, tc := range map[string]struct {
		dir  string
		want string
	}{
		"targets":             {filepath.Join(root, "targets"), "lies in plinth's root"},
		"staged":              {filepath.Join(root, "staged"), "lies in plinth's root"},
		"templates":           {filepath.Join(root, "templates"), "lies in plinth's root"},
		"the root":            {root, "is or contains plinth's root"},
		"above the root":      {tmp, "is or contains plinth's root"},
		"pools itself":        {filepath.Join(root, "pools"), "lies in plinth's root"},
		"a link into targets": {link, "lies in plinth's root"},
		"below pools":         {filepath.Join(root, "pools", "fast"), ""},
	} {
		c := CSIConfig{Root: root, NodeID: "n", Pools: []PoolSpec{{Name: "p", Backend: "file", Dir: tc.dir}}}
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want it accepted", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s (%s): %v, want %q", name, tc.dir, err, tc.want)
		}
	}
}

// Two pools on one directory, one of them given through a symlink.
func TestOverlapThroughSymlinkRefused(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "p")
	os.Mkdir(dir, 0o750)
	os.Symlink(dir, filepath.Join(tmp, "plink"))
	c := CSIConfig{Root: filepath.Join(tmp, "root"), NodeID: "n", Pools: []PoolSpec{
		{Name: "a", Backend: "file", Dir: filepath.Join(tmp, "plink")}, {Name: "b", Backend: "file", Dir: dir}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("two pools on one directory through a symlink: %v, want them refused as overlapping", err)
	}
}

// Two plinth processes with roots of their own and one pool directory
// (spelled alike or through a symlink) handed one tenant's live image to
// the other's tenant: the second start is refused.
func TestSharedPoolDirRefused(t *testing.T) {
	tmp := t.TempDir()
	shared := filepath.Join(tmp, "shared")
	os.Mkdir(shared, 0o750)
	os.Symlink(shared, filepath.Join(tmp, "shared-link"))
	a := CSIConfig{Root: filepath.Join(tmp, "ra"), NodeID: "n", Pools: []PoolSpec{{Name: "p", Backend: "file", Dir: shared}}}
	la, err := claimRoot(a)
	if err != nil {
		t.Fatal(err)
	}
	defer la.Unlock()
	for _, dir := range []string{shared, filepath.Join(tmp, "shared-link")} {
		b := CSIConfig{Root: filepath.Join(tmp, "rb"), NodeID: "n", Pools: []PoolSpec{{Name: "p", Backend: "file", Dir: dir}}}
		if lb, err := claimRoot(b); err == nil {
			lb.Unlock()
			t.Errorf("a second plinth on pool directory %s started", dir)
		} else if !strings.Contains(err.Error(), "in use by another plinth") {
			t.Errorf("pool directory %s: %v, want it said to be in use", dir, err)
		}
	}
}

// A root or pool directory others may write lets them put a symlink where
// plinth opens an image; a renamed lock file let a second plinth in.
func TestRootAndPoolMustBePlinths(t *testing.T) {
	tmp := t.TempDir()
	open := filepath.Join(tmp, "open")
	os.Mkdir(open, 0o750)
	os.Chmod(open, 0o777)
	if l, err := LockRoot(open); err == nil {
		l.Unlock()
		t.Error("a world-writable root was taken")
	} else if !strings.Contains(err.Error(), "writable by others") {
		t.Errorf("world-writable root: %v", err)
	}
	if err := CheckPoolDirs(filepath.Join(tmp, "root"), []PoolSpec{{Name: "p", Dir: open}}); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Errorf("world-writable pool directory: %v", err)
	}
	root := filepath.Join(tmp, "root")
	l, err := LockRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if err := os.Rename(filepath.Join(root, LockFileName), filepath.Join(root, LockFileName+".old")); err != nil {
		t.Fatal(err)
	}
	if l2, err := LockRoot(root); err == nil {
		l2.Unlock()
		t.Error("a second plinth took the root after its lock file was renamed")
	}
}

// A pool below the root that did not exist before the first start (the
// default pool) is locked from that start on.
func TestNewPoolBelowRootIsLocked(t *testing.T) {
	tmp := t.TempDir()
	rootA := filepath.Join(tmp, "ra")
	a := CSIConfig{Root: rootA, NodeID: "n", Pools: []PoolSpec{{Name: "default", Backend: "file", Dir: filepath.Join(rootA, "pools", "default")}}}
	la, err := claimRoot(a)
	if err != nil {
		t.Fatal(err)
	}
	defer la.Unlock()
	os.MkdirAll(filepath.Join(rootA, "pools", "default"), 0o750) // what the pool's open does
	b := CSIConfig{Root: filepath.Join(tmp, "rb"), NodeID: "n", Pools: []PoolSpec{{Name: "p", Backend: "file", Dir: filepath.Join(rootA, "pools", "default")}}}
	if lb, err := claimRoot(b); err == nil {
		lb.Unlock()
		t.Error("a second plinth took the first's default pool directory")
	}
}
