package csi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestValidateMountFlags(t *testing.T) {
	good := [][]string{nil, {"noatime"}, {"nodiscard", "commit=30"}, {"context=system_u:object_r:container_file_t:s0"}}
	bad := map[string][]string{
		"comma smuggles options":  {"noatime,bind"},
		"space":                   {"noatime nodev"},
		"bind":                    {"bind"},
		"remount":                 {"remount"},
		"propagation":             {"rshared"},
		"suid":                    {"suid"},
		"loop with offset":        {"offset=4096"},
		"shell":                   {"$(reboot)"},
		"path traversal in value": {"x=../../etc"},
		"empty":                   {""},
		"upper-case name":         {"NOATIME"},
		"too many":                strings.Fields(strings.Repeat("noatime ", 33)),
	}
	for _, f := range good {
		if err := validateMountFlags(f); err != nil {
			t.Errorf("validateMountFlags(%q) = %v", f, err)
		}
	}
	for name, f := range bad {
		if err := validateMountFlags(f); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: validateMountFlags(%q) = %v, want InvalidArgument", name, f, err)
		}
	}
}

func mountCap(fs string, flags []string, mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs, MountFlags: flags}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func TestCapabilities(t *testing.T) {
	rwo := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo}}
	tests := map[string]struct {
		caps []*csi.VolumeCapability
		ok   bool
	}{
		"ext4 rwo":           {caps: []*csi.VolumeCapability{mountCap("ext4", nil, rwo)}, ok: true},
		"block":              {caps: []*csi.VolumeCapability{block}, ok: true},
		"rwop":               {caps: []*csi.VolumeCapability{mountCap("", nil, csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)}, ok: true},
		"none":               {caps: nil},
		"unknown fs":         {caps: []*csi.VolumeCapability{mountCap("ntfs", nil, rwo)}},
		"fs type with path":  {caps: []*csi.VolumeCapability{mountCap("../../bin/sh", nil, rwo)}},
		"multi-node":         {caps: []*csi.VolumeCapability{mountCap("ext4", nil, csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}},
		"mixed block and fs": {caps: []*csi.VolumeCapability{block, mountCap("ext4", nil, rwo)}},
		"two fs types":       {caps: []*csi.VolumeCapability{mountCap("ext4", nil, rwo), mountCap("xfs", nil, rwo)}},
		"no access type":     {caps: []*csi.VolumeCapability{{AccessMode: &csi.VolumeCapability_AccessMode{Mode: rwo}}}},
		"no access mode":     {caps: []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}}},
		"bad flag in a cap":  {caps: []*csi.VolumeCapability{mountCap("ext4", []string{"bind"}, rwo)}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, err := capabilities(tc.caps)
			if tc.ok != (err == nil) {
				t.Fatalf("capabilities() = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && status.Code(err) != codes.InvalidArgument {
				t.Fatalf("code %v, want InvalidArgument", status.Code(err))
			}
		})
	}
}

func TestPathsCheck(t *testing.T) {
	root := t.TempDir()
	allowed := filepath.Join(root, "kubelet")
	owned := filepath.Join(root, "plinth")
	outside := filepath.Join(root, "etc")
	for _, d := range []string{allowed, owned, outside, filepath.Join(allowed, "pods")} {
		os.MkdirAll(d, 0o755)
	}
	// A parent that is a symlink pointing out of the allowed tree, one that
	// points into plinth's own directory, and a target that is a symlink.
	os.Symlink(outside, filepath.Join(allowed, "escape"))
	os.Symlink(owned, filepath.Join(allowed, "intoowned"))
	os.Symlink(outside, filepath.Join(allowed, "pods", "link"))
	p := Paths{Allowed: []string{allowed}, Owned: []string{owned}}
	tests := map[string]struct {
		path string
		code codes.Code
	}{
		"inside allowed":            {filepath.Join(allowed, "pods", "t"), codes.OK},
		"empty":                     {"", codes.InvalidArgument},
		"relative":                  {"pods/t", codes.InvalidArgument},
		"dot-dot":                   {allowed + "/pods/../../etc/t", codes.InvalidArgument},
		"trailing slash":            {allowed + "/pods/t/", codes.InvalidArgument},
		"NUL":                       {allowed + "/pods/t\x00x", codes.InvalidArgument},
		"outside":                   {filepath.Join(outside, "t"), codes.InvalidArgument},
		"plinth's own dir":          {filepath.Join(owned, "volumes"), codes.InvalidArgument},
		"the allowed root's parent": {root, codes.InvalidArgument},
		"parent symlink escapes":    {filepath.Join(allowed, "escape", "t"), codes.InvalidArgument},
		"parent symlink into owned": {filepath.Join(allowed, "intoowned", "t"), codes.InvalidArgument},
		"target is a symlink":       {filepath.Join(allowed, "pods", "link"), codes.InvalidArgument},
		"missing parent":            {filepath.Join(allowed, "nope", "t"), codes.NotFound},
		"very long":                 {"/" + strings.Repeat("a/", 2100), codes.InvalidArgument},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := p.Resolve("target path", tc.path, lstatLink, filepath.EvalSymlinks)
			if status.Code(toStatus(err)) != tc.code {
				t.Fatalf("Resolve(%q) = %v, want %v", tc.path, err, tc.code)
			}
		})
	}
}

func TestPage(t *testing.T) {
	ids := []string{"a", "b", "c", "d", "e"}
	id := func(s string) string { return s }
	var got []string
	token := ""
	for i := 0; i < 10; i++ {
		items, next, err := page(ids, id, token, volumeTokenPrefix, 2)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, items...)
		if next == "" {
			break
		}
		token = next
	}
	if strings.Join(got, "") != "abcde" {
		t.Fatalf("paged %v, want a..e once each", got)
	}
	// A token whose entry was deleted still continues after it.
	if items, _, err := page([]string{"a", "c"}, id, volumeTokenPrefix+"b", volumeTokenPrefix, 0); err != nil || len(items) != 1 || items[0] != "c" {
		t.Fatalf("after deleted entry: %v %v", items, err)
	}
	for _, bad := range []string{"garbage", "v1:../x", "s1:a"} {
		if _, _, err := page(ids, id, bad, volumeTokenPrefix, 0); status.Code(err) != codes.Aborted {
			t.Errorf("token %q: %v, want Aborted", bad, err)
		}
	}
}
