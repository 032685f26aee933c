package standalone

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/test/testenv"
)

// TestTemplatesLeftByAKilledPlinth: before plinth starts, its templates
// directory holds the temp files of templates a killed plinth was making,
// a symlink named like one that points at a file outside, an unrelated
// file, and, at the name of the template for 64 MiB, a symlink to a real
// ext4 image holding a directory an attacker planted. After the start the
// temp files are gone, the rest is untouched, and a new 64 MiB ext4 volume
// does not hold what was planted (issue 26, item 6).
func TestTemplatesLeftByAKilledPlinth(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(e.cfg.Root, "templates")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("not plinth's"), 0o600); err != nil {
		t.Fatal(err)
	}
	var temps []string
	for _, name := range []string{".ext4-67108864.v1.img.tmp-2840013", ".ext4-1073741824.v1.img.tmp-17"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
		temps = append(temps, p)
	}
	link := filepath.Join(dir, ".ext4-67108864.v1.img.tmp-99")
	unrelated := filepath.Join(dir, "README")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(unrelated, []byte("an admin's note"), 0o600); err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	planted := filepath.Join(t.TempDir(), "planted.img")
	if err := os.WriteFile(planted, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(planted, size); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"mkfs.ext4", "-F", "-q", "-m0", "-b", "4096", "-O", "metadata_csum_seed", "-E", "nodiscard,assume_storage_prezeroed=1", planted},
		{"debugfs", "-w", "-R", "mkdir planted", planted},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	if err := os.Symlink(planted, filepath.Join(dir, "ext4-"+strconv.Itoa(size)+".v1.img")); err != nil {
		t.Fatal(err)
	}
	plantedSum := sha(t, planted)

	c := testenv.Dial(t, testenv.Standalone(t, e.cfg))
	for _, p := range temps {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("half-made template %s left after start: %v", filepath.Base(p), err)
		}
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("symlink named like a temp file: %v, %v", fi, err)
	}
	if b, err := os.ReadFile(outside); err != nil || string(b) != "not plinth's" {
		t.Errorf("file outside: %q, %v", b, err)
	}
	if b, err := os.ReadFile(unrelated); err != nil || string(b) != "an admin's note" {
		t.Errorf("unrelated file: %q, %v", b, err)
	}

	v := &vol{name: "fresh", pool: "fext4", cap: testenv.MountCap("ext4"), size: size}
	create(t, c, v)
	staging, _ := e.paths(v)
	if _, err := c.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: v.cap}); err != nil {
		t.Fatalf("stage: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(staging, &st); err != nil || int64(st.Blocks)*st.Bsize > size {
		t.Fatalf("staged volume: %d blocks of %d, %v", st.Blocks, st.Bsize, err)
	}
	if _, err := os.Lstat(filepath.Join(staging, "planted")); err == nil {
		t.Errorf("the new volume holds what was planted at its template's name")
	}
	if sha(t, planted) != plantedSum {
		t.Errorf("the file the template symlink pointed at changed")
	}
	if _, err := c.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("unstage: %v", err)
	}
}

func sha(t *testing.T, p string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
