package disk_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/disk"
)

// loadWithin runs Records.Load and fails the test when it has not returned
// in a few seconds (a FIFO opened for reading blocks until a writer comes).
func loadWithin(t *testing.T, r disk.Records, fifos ...string) ([]disk.Claim, error) {
	t.Helper()
	type result struct {
		claims []disk.Claim
		err    error
	}
	done := make(chan result, 1)
	go func() {
		c, err := r.Load()
		done <- result{c, err}
	}()
	select {
	case res := <-done:
		return res.claims, res.err
	case <-time.After(5 * time.Second):
		// Let the blocked open go: a writer on each FIFO.
		for _, f := range fifos {
			if fd, err := unix.Open(f, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
				unix.Close(fd)
			}
		}
		t.Fatal("Records.Load has not returned after 5s")
		return nil, nil
	}
}

// Trial finding 7: a FIFO named like a claim record hung plinth's start
// for ever. It is refused with a clear reason on that pool alone; the other
// records load.
func TestClaimRecordThatIsAFIFO(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "claims")
	r := disk.Records{Dir: dir}
	if err := r.Put(disk.Claim{Pool: "good", Layout: disk.LayoutDisk, State: disk.ClaimReady, Disks: []disk.Member{{ID: "wwn:1"}}}); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "dp.json")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	claims, err := loadWithin(t, r, fifo)
	if err != nil {
		t.Fatalf("Load: %v; want the FIFO refused as one record, the others loaded", err)
	}
	if len(claims) != 2 || claims[0].Pool != "dp" || claims[1].Pool != "good" {
		t.Fatalf("claims %+v, want dp (unreadable) and good", claims)
	}
	if !strings.Contains(claims[0].Unreadable, "not a regular file") || !strings.Contains(claims[0].Unreadable, fifo) {
		t.Errorf("dp: unreadable %q, want it to name the file and say it is not a regular file", claims[0].Unreadable)
	}
	if claims[1].Unreadable != "" || len(claims[1].Disks) != 1 {
		t.Errorf("good: %+v", claims[1])
	}
}

// A symlink named like a claim record is not followed.
func TestClaimRecordThatIsASymlink(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "claims")
	other := disk.Records{Dir: filepath.Join(t.TempDir(), "elsewhere")}
	if err := other.Put(disk.Claim{Pool: "dp", Layout: disk.LayoutDisk, State: disk.ClaimReady}); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(other.Dir, "dp.json"), filepath.Join(dir, "dp.json")); err != nil {
		t.Fatal(err)
	}
	claims, err := loadWithin(t, disk.Records{Dir: dir})
	if err != nil || len(claims) != 1 || !strings.Contains(claims[0].Unreadable, "symlink") {
		t.Fatalf("claims %+v, %v: want dp unreadable, a symlink", claims, err)
	}
}

// The claims directory itself a symlink: refused, to read and to write.
func TestClaimsDirectoryThatIsASymlink(t *testing.T) {
	real := disk.Records{Dir: filepath.Join(t.TempDir(), "real")}
	if err := real.Put(disk.Claim{Pool: "dp", Layout: disk.LayoutDisk, State: disk.ClaimReady}); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "claims")
	if err := os.Symlink(real.Dir, link); err != nil {
		t.Fatal(err)
	}
	r := disk.Records{Dir: link}
	if _, err := loadWithin(t, r); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Load: %v, want the symlinked directory refused", err)
	}
	if err := r.Put(disk.Claim{Pool: "other", Layout: disk.LayoutDisk, State: disk.ClaimReady}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Put: %v, want the symlinked directory refused", err)
	}
	if _, err := os.Stat(filepath.Join(real.Dir, "other.json")); err == nil {
		t.Error("Put wrote through the symlink")
	}
}
