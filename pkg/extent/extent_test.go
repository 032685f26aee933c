package extent_test

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/extent"
	"github.com/plinth-dev/plinth/test/testfs"
)

const blk = 4096

func write(t *testing.T, f *os.File, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	rand.Read(p)
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

func create(t *testing.T, path string, size int64) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

// clone makes a reflink copy of src at path.
func clone(t *testing.T, src *os.File, path string) *os.File {
	t.Helper()
	st, _ := src.Stat()
	f := create(t, path, 0)
	if err := src.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlFileClone(int(f.Fd()), int(src.Fd())); err != nil {
		t.Skipf("no reflink here: %v", err)
	}
	if err := f.Truncate(st.Size()); err != nil {
		t.Fatal(err)
	}
	return f
}

func collect(t *testing.T, seq func(func(extent.Range, error) bool)) []extent.Range {
	t.Helper()
	var out []extent.Range
	for r, err := range seq {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// blocks rounds r out to whole blocks.
func blocks(off, n int64) extent.Range {
	lo := off / blk * blk
	hi := (off + n + blk - 1) / blk * blk
	return extent.Range{Off: lo, Len: hi - lo}
}

// On a reflink copy, Delta is exactly what was written since, block by
// block: over data, into a hole, across the end of a data range; a punched
// hole; and nothing for what reads as zeros in both.
func TestDeltaIsWhatChanged(t *testing.T) {
	for _, fs := range []string{"xfs", "btrfs"} {
		t.Run(fs, func(t *testing.T) {
			testfs.RequireHost(t, "mkfs."+fs)
			dir := testfs.Filesystem(t, fs, 512<<20)
			const size = 64 << 20
			now := create(t, filepath.Join(dir, "vol.img"), size)
			write(t, now, 0, 8<<20)
			write(t, now, 20<<20, 4<<20)
			write(t, now, 40<<20, 16<<20)
			base := clone(t, now, filepath.Join(dir, "snap.img"))
			if got := collect(t, extent.Delta(base, now, 0, size)); len(got) != 0 {
				t.Fatalf("Delta of a fresh copy = %v; want nothing", got)
			}
			if shared, err := extent.Shared(now); err != nil || !shared {
				t.Fatalf("Shared = %v, %v; want true for a reflinked file", shared, err)
			}
			write(t, now, 12345, 1<<20)      // over data, unaligned
			write(t, now, 10<<20, 64<<10)    // into a hole
			write(t, now, 24<<20-blk, 2*blk) // across a data range's end
			write(t, now, 50<<20+100, 1)     // one byte
			if err := unix.Fallocate(int(now.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 44<<20, 1<<20); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fallocate(int(now.Fd()), unix.FALLOC_FL_KEEP_SIZE, 60<<20, 1<<20); err != nil {
				t.Fatal(err) // preallocated: reads as zeros, as the hole in base
			}
			want := []extent.Range{
				blocks(12345, 1<<20),
				blocks(10<<20, 64<<10),
				blocks(24<<20-blk, 2*blk),
				{Off: 44 << 20, Len: 1 << 20},
				blocks(50<<20+100, 1),
			}
			slices.SortFunc(want, func(a, b extent.Range) int { return int(a.Off - b.Off) })
			got := collect(t, extent.Delta(base, now, 0, size))
			if !slices.Equal(got, want) {
				t.Fatalf("Delta =\n %v\nwant\n %v", got, want)
			}
			// The other way round: the same ranges.
			if back := collect(t, extent.Delta(now, base, 0, size)); !slices.Equal(back, want) {
				t.Fatalf("Delta(now, base) = %v; want %v", back, want)
			}
		})
	}
}

// More extents than one FIEMAP batch: the walk goes on across batches and
// finds the one block changed among them.
func TestDeltaAcrossBatches(t *testing.T) {
	testfs.RequireHost(t, "mkfs.xfs")
	dir := testfs.Filesystem(t, "xfs", 320<<20)
	const n = 1500 // data blocks, each between holes: 1500 extents
	size := int64(2 * n * blk)
	now := create(t, filepath.Join(dir, "vol.img"), size)
	for i := range int64(n) {
		write(t, now, 2*i*blk, blk)
	}
	base := clone(t, now, filepath.Join(dir, "snap.img"))
	write(t, now, 2*1234*blk, blk)
	write(t, now, 2*1499*blk+1, 1)
	got := collect(t, extent.Delta(base, now, 0, size))
	want := []extent.Range{{Off: 2 * 1234 * blk, Len: blk}, {Off: 2 * 1499 * blk, Len: blk}}
	if !slices.Equal(got, want) {
		t.Fatalf("Delta = %v; want %v", got, want)
	}
	var data int64
	for r := range extent.Allocated(now, 0, size) {
		data += r.Len
	}
	if data != n*blk {
		t.Fatalf("Allocated holds %d bytes; want %d", data, n*blk)
	}
}

// Without reflinks (ext4: a snapshot is a full copy) nothing is shared:
// Delta is every data range of either file, and Shared says so.
func TestDeltaWithoutReflinks(t *testing.T) {
	testfs.RequireHost(t, "mkfs.ext4")
	dir := testfs.Filesystem(t, "ext4", 256<<20)
	const size = 16 << 20
	a := create(t, filepath.Join(dir, "a.img"), size)
	b := create(t, filepath.Join(dir, "b.img"), size)
	write(t, a, 0, 1<<20)
	write(t, b, 4<<20, 1<<20)
	if shared, err := extent.Shared(a); err != nil || shared {
		t.Fatalf("Shared = %v, %v; want false on ext4", shared, err)
	}
	got := collect(t, extent.Delta(a, b, 0, size))
	want := []extent.Range{{Off: 0, Len: 1 << 20}, {Off: 4 << 20, Len: 1 << 20}}
	if !slices.Equal(got, want) {
		t.Fatalf("Delta = %v; want %v", got, want)
	}
	if got := collect(t, extent.Allocated(b, 0, size)); !slices.Equal(got, want[1:]) {
		t.Fatalf("Allocated = %v; want %v", got, want[1:])
	}
}

// Allocated stops at size, and Delta does not look past it.
func TestSizeBounds(t *testing.T) {
	dir := t.TempDir()
	f := create(t, filepath.Join(dir, "a.img"), 8<<20)
	write(t, f, 0, 1<<20)
	write(t, f, 6<<20, 1<<20)
	got := collect(t, extent.Allocated(f, 0, 512<<10))
	if len(got) != 1 || got[0] != (extent.Range{Off: 0, Len: 512 << 10}) {
		t.Fatalf("Allocated to 512 KiB = %v", got)
	}
	// From the middle of a data range: the rest of it, then the next.
	got = collect(t, extent.Allocated(f, 768<<10, 8<<20))
	want := []extent.Range{{Off: 768 << 10, Len: 256 << 10}, {Off: 6 << 20, Len: 1 << 20}}
	if !slices.Equal(got, want) {
		t.Fatalf("Allocated from 768 KiB = %v; want %v", got, want)
	}
}

// Delta from an offset in the middle of a change starts there.
func TestDeltaFrom(t *testing.T) {
	testfs.RequireHost(t, "mkfs.xfs")
	dir := testfs.Filesystem(t, "xfs", 320<<20)
	const size = 8 << 20
	now := create(t, filepath.Join(dir, "vol.img"), size)
	write(t, now, 0, 4<<20)
	base := clone(t, now, filepath.Join(dir, "snap.img"))
	write(t, now, 1<<20, 1<<20)
	write(t, now, 3<<20, 4096)
	got := collect(t, extent.Delta(base, now, 1<<20+8192, size))
	want := []extent.Range{{Off: 1<<20 + 8192, Len: 1<<20 - 8192}, {Off: 3 << 20, Len: 4096}}
	if !slices.Equal(got, want) {
		t.Fatalf("Delta from 1 MiB+8 KiB = %v; want %v", got, want)
	}
}

// A filesystem without FIEMAP (tmpfs) says so, as an error a caller can
// tell apart, at the first step.
func TestDeltaUnsupported(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "extent")
	if err != nil {
		t.Skip(err)
	}
	defer os.RemoveAll(dir)
	a := create(t, filepath.Join(dir, "a"), 1<<20)
	write(t, a, 0, 4096)
	for _, err := range extent.Delta(a, a, 0, 1<<20) {
		if err == nil {
			t.Skip("this tmpfs maps extents")
		}
		if !errors.Is(err, extent.ErrUnsupported) {
			t.Fatalf("Delta on tmpfs: %v; want ErrUnsupported", err)
		}
		return
	}
	t.Fatal("Delta on tmpfs yielded nothing")
}
