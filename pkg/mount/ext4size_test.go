package mount

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestExt4Bytes: the size read from the superblock is the size mkfs made,
// for 32- and 64-bit filesystems and either block size; anything else is
// foreign data.
func TestExt4Bytes(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4")
	}
	tests := map[string]struct {
		args []string
		size int64
	}{
		"4 KiB blocks, 64-bit":    {[]string{"-b", "4096", "-O", "64bit"}, 48 << 20},
		"4 KiB blocks, 32-bit":    {[]string{"-b", "4096", "-O", "^64bit"}, 48 << 20},
		"1 KiB blocks, part used": {[]string{"-b", "1024"}, 20 << 20},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			if err := os.WriteFile(img, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, 64<<20); err != nil {
				t.Fatal(err)
			}
			args := append(append([]string{"-q", "-F"}, tc.args...), img, strconv.FormatInt(tc.size/1024, 10)+"k")
			if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
				t.Fatalf("mkfs.ext4 %v: %v: %s", args, err, out)
			}
			got, err := ext4Bytes(img)
			if err != nil || got != tc.size {
				t.Fatalf("ext4Bytes = %d, %v; want %d", got, err, tc.size)
			}
		})
	}
	blank := filepath.Join(t.TempDir(), "blank.img")
	if err := os.WriteFile(blank, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ext4Bytes(blank); !errors.Is(err, ErrForeignData) {
		t.Errorf("ext4Bytes of zeros = %v, want ErrForeignData", err)
	}
}
