package volume

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/plinth-dev/plinth/pkg/pool"
)

func TestSize(t *testing.T) {
	const mi = 1 << 20
	tests := map[string]struct {
		required, limit int64
		mode            pool.Mode
		fsType          string
		want            int64
		err             error
	}{
		"no range gives the default":         {mode: pool.ModeFilesystem, fsType: "ext4", want: DefaultSize},
		"limit below default caps it":        {limit: 100 * mi, mode: pool.ModeBlock, want: 100 * mi},
		"rounded up to 4 KiB":                {required: 5000, mode: pool.ModeBlock, want: 8192},
		"xfs minimum":                        {required: 10 * mi, mode: pool.ModeFilesystem, fsType: "xfs", want: 300 * mi},
		"block has no fs minimum":            {required: 10 * mi, mode: pool.ModeBlock, fsType: "xfs", want: 10 * mi},
		"own-fs pool (no mkfs) no minimum":   {required: 10 * mi, mode: pool.ModeFilesystem, want: 10 * mi},
		"xfs minimum above limit":            {required: 10 * mi, limit: 20 * mi, mode: pool.ModeFilesystem, fsType: "xfs", err: pool.ErrOutOfRange},
		"required above limit":               {required: 20 * mi, limit: 10 * mi, mode: pool.ModeBlock, err: pool.ErrOutOfRange},
		"rounding would pass an exact limit": {required: 5000, limit: 5000, mode: pool.ModeBlock, err: pool.ErrOutOfRange},
		"negative":                           {required: -1, mode: pool.ModeBlock, err: pool.ErrInvalid},
		"beyond the maximum":                 {required: MaxSize + 1, mode: pool.ModeBlock, err: pool.ErrOutOfRange},
		"exact limit is kept":                {required: 8192, limit: 8192, mode: pool.ModeBlock, want: 8192},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Size(tc.required, tc.limit, tc.mode, tc.fsType)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Size() error = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Size() = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestParseParams(t *testing.T) {
	tests := map[string]struct {
		in   map[string]string
		want Params
		bad  bool
	}{
		"empty":                {in: nil, want: Params{}},
		"pool and thick":       {in: map[string]string{"pool": "fast", "provisioning": "thick"}, want: Params{Pool: "fast", Thick: true}},
		"backend":              {in: map[string]string{"backend": "btrfs"}, want: Params{Backend: "btrfs"}},
		"CO keys ignored":      {in: map[string]string{"csi.storage.k8s.io/pvc/name": "x", "csi.storage.k8s.io/fstype": "xfs", "csi.storage.k8s.io/node-stage-secret-name": "s"}, want: Params{}},
		"CO key misspelt":      {in: map[string]string{"csi.storage.k8s.io/fs-type": "xfs"}, bad: true},
		"CO key unknown":       {in: map[string]string{"csi.storage.k8s.io/anything": "x"}, bad: true},
		"unknown key":          {in: map[string]string{"pol": "fast"}, bad: true},
		"pool name traversal":  {in: map[string]string{"pool": "../etc"}, bad: true},
		"pool name with slash": {in: map[string]string{"pool": "a/b"}, bad: true},
		"pool name too long":   {in: map[string]string{"pool": "a23456789012345678901234567890123"}, bad: true},
		"bad backend":          {in: map[string]string{"backend": "lvm"}, bad: true},
		"bad provisioning":     {in: map[string]string{"provisioning": "fat"}, bad: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseParams(tc.in)
			if tc.bad {
				if !errors.Is(err, pool.ErrInvalid) {
					t.Fatalf("ParseParams() error = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("ParseParams() (-want +got):\n%s", d)
			}
		})
	}
}

// A misspelt Kubernetes key is refused with the key it was probably meant
// to be.
func TestMisspeltCOKeyNamesNearest(t *testing.T) {
	_, err := ParseParams(map[string]string{"csi.storage.k8s.io/fs-type": "xfs"})
	if err == nil || !strings.Contains(err.Error(), `did you mean "csi.storage.k8s.io/fstype"`) {
		t.Errorf("error %v: want it to name csi.storage.k8s.io/fstype", err)
	}
	_, err = ParseParams(map[string]string{"csi.storage.k8s.io/provisioner-secret-nme": "x"})
	if err == nil || !strings.Contains(err.Error(), `"csi.storage.k8s.io/provisioner-secret-name"`) {
		t.Errorf("error %v: want it to name provisioner-secret-name", err)
	}
	_, err = ParseParams(map[string]string{"csi.storage.k8s.io/zzzzzzzzzzzz": "x"})
	if err == nil || strings.Contains(err.Error(), "did you mean") {
		t.Errorf("error %v: nothing is near, want no suggestion", err)
	}
}

func TestIDsAreStableAndValid(t *testing.T) {
	for _, name := range []string{"pvc-1", "../../etc/passwd", "名前", string(make([]byte, 1024))} {
		id := VolumeID(name)
		if id != VolumeID(name) {
			t.Fatalf("VolumeID(%q) not stable", name)
		}
		if err := pool.ValidateID("volume ID", id); err != nil {
			t.Errorf("VolumeID(%q) = %q is not a valid ID: %v", name, id, err)
		}
		if err := pool.ValidateID("snapshot ID", SnapshotID(name)); err != nil {
			t.Errorf("SnapshotID(%q) invalid: %v", name, err)
		}
	}
	if VolumeID("a") == VolumeID("b") {
		t.Error("different names share an ID")
	}
}
