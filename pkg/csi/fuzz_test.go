package csi

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzMountFlags: an accepted flag is a plain option: no separators, no
// option that changes what or where something is mounted.
func FuzzMountFlags(f *testing.F) {
	for _, s := range []string{"noatime", "ro,remount", "bind", "x=../y", "context=system_u:object_r:t:s0", "commit=30"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, flag string) {
		if validateMountFlags([]string{flag}) != nil {
			return
		}
		name, _, _ := strings.Cut(flag, "=")
		if strings.ContainsAny(flag, ", \t\n\x00/") || forbiddenFlags[name] || flag == "" {
			t.Fatalf("accepted mount flag %q", flag)
		}
	})
}

// FuzzPathsCheck: an accepted path lies under an allowed root and outside
// plinth's own directories.
func FuzzPathsCheck(f *testing.F) {
	for _, s := range []string{"/var/lib/kubelet/pods/x", "/var/lib/kubelet/../plinth", "/var/lib/plinth/pools", "relative", "/var/lib/kubelet", "/var/lib/kubeletx/y"} {
		f.Add(s)
	}
	p := Paths{Allowed: []string{"/var/lib/kubelet"}, Owned: []string{"/var/lib/kubelet/plinth-state", "/var/lib/plinth"}}
	noLink := func(string) (bool, error) { return false, nil }
	same := func(s string) (string, error) { return s, nil }
	f.Fuzz(func(t *testing.T, path string) {
		if _, err := p.Resolve("path", path, noLink, same); err != nil {
			return
		}
		if !strings.HasPrefix(path, "/var/lib/kubelet/") || strings.HasPrefix(path+"/", "/var/lib/kubelet/plinth-state/") || filepath.Clean(path) != path {
			t.Fatalf("accepted %q", path)
		}
	})
}

// FuzzPageToken: any token either pages or is refused with ABORTED.
func FuzzPageToken(f *testing.F) {
	f.Add("v1:pv-1", int32(2))
	f.Add("garbage", int32(0))
	f.Add("v1:../x", int32(-1))
	ids := []string{"pv-1", "pv-2", "pv-3"}
	f.Fuzz(func(t *testing.T, token string, max int32) {
		items, next, err := page(ids, func(s string) string { return s }, token, volumeTokenPrefix, max)
		if err != nil {
			return
		}
		if len(items) > len(ids) || next != "" && !strings.HasPrefix(next, volumeTokenPrefix) {
			t.Fatalf("page(%q, %d) = %v, %q", token, max, items, next)
		}
	})
}
