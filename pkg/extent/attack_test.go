package extent_test

// Adversarial tests of Delta, Allocated and Shared on real filesystems.
//
// The oracle for Delta: a receiver holds base as it was when the snapshot
// was taken; it copies only the ranges Delta yields from now (a range that
// reads as zeros makes zeros) and takes now's size. Its file must then be
// byte for byte now. Every walk runs under a deadline, so a walk that
// never ends fails instead of hanging the test binary.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/extent"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/test/testfs"
)

const (
	kib = 1 << 10
	mib = 1 << 20

	walkDeadline = 20 * time.Second
)

// walk runs seq to its end under a deadline, checking that what it
// yields is in order, not empty and inside [from, size).
func walk(seq iter.Seq2[extent.Range, error], from, size int64) ([]extent.Range, error) {
	type result struct {
		rs  []extent.Range
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var rs []extent.Range
		prev := max(from, 0)
		for r, err := range seq {
			if err != nil {
				ch <- result{rs, err}
				return
			}
			if r.Len <= 0 || r.Off < prev || r.End() > size {
				ch <- result{rs, fmt.Errorf("range %+v out of order or bounds (after %d, size %d)", r, prev, size)}
				return
			}
			prev = r.End()
			rs = append(rs, r)
		}
		ch <- result{rs, nil}
	}()
	select {
	case r := <-ch:
		return r.rs, r.err
	case <-time.After(walkDeadline):
		return nil, fmt.Errorf("the walk did not end in %v: loops forever?", walkDeadline)
	}
}

func readAll(t *testing.T, f *os.File) []byte {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sizeOf(t *testing.T, f *os.File) int64 {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// fiemap shows the extents of path around off (for failure reports).
func fiemap(path string, off int64) string {
	lo := max(off-64*kib, 0) &^ (4*kib - 1)
	out, err := exec.Command("xfs_io", "-r", "-c", fmt.Sprintf("fiemap -v %d %d", lo, 192*kib), path).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(xfs_io: %v) %s", err, out)
	}
	return string(out)
}

// diffs are the maximal runs of bytes where held (what a receiver holds,
// zeros past its end, cut at size) and want (zeros past its end) differ.
func diffs(held, want []byte, size int64) []extent.Range {
	at := func(b []byte, i int64) byte {
		if i < int64(len(b)) {
			return b[i]
		}
		return 0
	}
	var out []extent.Range
	const chunk = 4 * kib
	for c := int64(0); c < size; c += chunk {
		e := min(c+chunk, size)
		if e <= int64(len(held)) && e <= int64(len(want)) && bytes.Equal(held[c:e], want[c:e]) {
			continue
		}
		for i := c; i < e; i++ {
			if at(held, i) == at(want, i) {
				continue
			}
			if n := len(out); n > 0 && out[n-1].End() == i {
				out[n-1].Len++
			} else {
				out = append(out, extent.Range{Off: i, Len: 1})
			}
		}
	}
	return out
}

// uncovered is what of want, within [from, size), no range of rs (in
// order) covers, and how many bytes that is.
func uncovered(want, rs []extent.Range, from, size int64) (missed []extent.Range, n int64) {
	j := 0
	for _, d := range want {
		lo, hi := max(d.Off, from), min(d.End(), size)
		for lo < hi {
			for j < len(rs) && rs[j].End() <= lo {
				j++
			}
			if j < len(rs) && rs[j].Off <= lo {
				lo = min(rs[j].End(), hi)
				continue
			}
			next := hi
			if j < len(rs) {
				next = min(rs[j].Off, hi)
			}
			missed = append(missed, extent.Range{Off: lo, Len: next - lo})
			n += next - lo
			lo = next
		}
	}
	return missed, n
}

// checkDelta walks Delta(base, now, from, size) and checks that a receiver
// holding held (base's bytes) that copies the yielded ranges of now ends
// with now's bytes (nowB) over [from, size): every differing byte there is
// in a yielded range. It reports whether that holds.
func checkDelta(t *testing.T, label string, base, now *os.File, held, nowB []byte, from, size int64) bool {
	t.Helper()
	return checkDeltaDiffs(t, label, base, now, diffs(held, nowB, size), from, size)
}

func checkDeltaDiffs(t *testing.T, label string, base, now *os.File, diff []extent.Range, from, size int64) bool {
	t.Helper()
	rs, err := walk(extent.Delta(base, now, from, size), from, size)
	if err != nil {
		t.Errorf("%s from %d: %v", label, from, err)
		return false
	}
	missed, n := uncovered(diff, rs, from, size)
	if len(missed) == 0 {
		return true
	}
	first := missed[0].Off
	var near []extent.Range
	for _, r := range rs {
		if r.End() >= first-256*kib && r.Off <= first+256*kib {
			near = append(near, r)
		}
	}
	t.Errorf("%s from %d (size %d): MISSED %d differing bytes, in %d runs, the first %v (block %d); %d ranges yielded, near it: %v\n%s:\n%s\n%s:\n%s",
		label, from, size, n, len(missed), missed[:min(len(missed), 8)], first/4096, len(rs), near,
		base.Name(), fiemap(base.Name(), first), now.Name(), fiemap(now.Name(), first))
	return false
}

// pair is a volume image and a reflink snapshot of it, with the bytes the
// snapshot held when it was taken (what a receiver filled from it holds).
type pair struct {
	t         *testing.T
	dir       string
	now, base *os.File
	held      []byte
	rng       *rand.Rand
}

// data makes n bytes no earlier write made; every other run of 8 is the
// same byte, so that a compressing filesystem compresses them.
func data(rng *rand.Rand, n int) []byte {
	p := make([]byte, (n+15)&^15)
	for i := 0; i < len(p); i += 16 {
		v := rng.Uint64()
		binary.LittleEndian.PutUint64(p[i:], v)
		binary.LittleEndian.PutUint64(p[i+8:], (v&0xff)*0x0101010101010101)
	}
	return p[:n]
}

func (p *pair) write(f *os.File, off int64, n int) {
	p.t.Helper()
	if _, err := f.WriteAt(data(p.rng, n), off); err != nil {
		p.t.Fatalf("write %d at %d: %v", n, off, err)
	}
}

func (p *pair) falloc(mode uint32, off, n int64) error {
	return unix.Fallocate(int(p.now.Fd()), mode, off, n)
}

func (p *pair) mustFalloc(mode uint32, off, n int64) {
	p.t.Helper()
	if err := p.falloc(mode, off, n); err != nil {
		p.t.Fatalf("fallocate mode %#x at %d, %d: %v", mode, off, n, err)
	}
}

func (p *pair) sync(f *os.File) {
	p.t.Helper()
	if err := f.Sync(); err != nil {
		p.t.Fatal(err)
	}
}

func openNew(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// snapshot makes base a reflink copy of now (as the pool does: FICLONE,
// then fsync) and keeps its bytes.
func (p *pair) snapshot() {
	p.t.Helper()
	p.base = openNew(p.t, filepath.Join(p.dir, "snap.img"))
	if err := unix.IoctlFileClone(int(p.base.Fd()), int(p.now.Fd())); err != nil {
		p.t.Fatalf("FICLONE: %v", err)
	}
	p.sync(p.base)
	p.held = readAll(p.t, p.base)
}

// standard fills a fresh now: data, a hole, data ending mid-block, an
// unwritten (preallocated) range, more data; size 8 MiB.
func standard(p *pair) {
	p.t.Helper()
	if err := p.now.Truncate(8 * mib); err != nil {
		p.t.Fatal(err)
	}
	p.write(p.now, 0, 2*mib)
	p.write(p.now, 3*mib, 5000)
	p.write(p.now, 5*mib, 3*mib)
	// Flushed before the preallocation: btrfs compresses no delalloc of a
	// file that has preallocated extents.
	p.sync(p.now)
	p.mustFalloc(unix.FALLOC_FL_KEEP_SIZE, 4*mib, mib)
	p.sync(p.now)
}

func newPair(t *testing.T, dir string, seed uint64, fill func(*pair)) *pair {
	t.Helper()
	d, err := os.MkdirTemp(dir, "case")
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{t: t, dir: d, rng: rand.New(rand.NewPCG(1, seed))}
	p.now = openNew(t, filepath.Join(d, "vol.img"))
	fill(p)
	p.snapshot()
	return p
}

// verify checks Delta both ways, from the start and from offsets inside
// blocks and extents; and that base still reads as when it was taken.
func (p *pair) verify() {
	t := p.t
	t.Helper()
	baseB := readAll(t, p.base)
	if !bytes.Equal(baseB, p.held) {
		t.Errorf("the snapshot changed since it was taken (%d bytes then, %d now)", len(p.held), len(baseB))
	}
	nowB := readAll(t, p.now)
	ns, bs := int64(len(nowB)), int64(len(baseB))
	fwd, back := diffs(p.held, nowB, ns), diffs(nowB, baseB, bs)
	if rs, err := walk(extent.Delta(p.base, p.now, 0, ns), 0, ns); err == nil {
		var yielded, differ int64
		for _, r := range rs {
			yielded += r.Len
		}
		for _, d := range fwd {
			differ += d.Len
		}
		t.Logf("Delta(base, now): %d ranges, %d bytes; %d bytes differ (size %d, base %d)", len(rs), yielded, differ, ns, bs)
	}
	for _, from := range froms(ns) {
		if !checkDeltaDiffs(t, "Delta(base, now)", p.base, p.now, fwd, from, ns) {
			break
		}
	}
	for _, from := range froms(bs)[:2] {
		if !checkDeltaDiffs(t, "Delta(now, base)", p.now, p.base, back, from, bs) {
			break
		}
	}
}

func froms(size int64) []int64 {
	out := []int64{0}
	for _, f := range []int64{4095, 1*mib + 12345, size/2 + 1, size - 1} {
		if f > 0 && f < size {
			out = append(out, f)
		}
	}
	return out
}

// directWrite writes n fresh bytes at off with O_DIRECT; false if the
// filesystem refuses the alignment.
func (p *pair) directWrite(off int64, n int) bool {
	p.t.Helper()
	fd, err := unix.Open(p.now.Name(), unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		p.t.Fatal(err)
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, (n+4095)&^4095, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		p.t.Fatal(err)
	}
	defer unix.Munmap(buf)
	copy(buf, data(p.rng, n))
	w, err := unix.Pwrite(fd, buf[:n], off)
	if errors.Is(err, unix.EINVAL) {
		p.t.Logf("O_DIRECT write of %d at %d: %v", n, off, err)
		return false
	}
	if err != nil || w != n {
		p.t.Fatalf("O_DIRECT write of %d at %d: %d, %v", n, off, w, err)
	}
	return true
}

func cloneRange(dst *os.File, dstOff int64, src *os.File, srcOff, n int64) error {
	return unix.IoctlFileCloneRange(int(dst.Fd()), &unix.FileCloneRange{
		Src_fd: int64(src.Fd()), Src_offset: uint64(srcOff), Src_length: uint64(n), Dest_offset: uint64(dstOff)})
}

type reflinkCase struct {
	name string
	fill func(*pair) // nil: standard
	run  func(*pair)
}

var reflinkCases = []reflinkCase{
	{name: "Fresh", run: func(p *pair) {}},
	{name: "BufferedWrites", run: func(p *pair) {
		p.write(p.now, 12345, mib)          // over shared data, unaligned
		p.write(p.now, 2*mib+8*kib, 64*kib) // into a hole
		p.write(p.now, 3*mib+4000, 300)     // in the partial last block of a data range
		p.write(p.now, 4*mib+100, 3*kib)    // into unwritten
		p.write(p.now, 8*mib-1, 1)          // the last byte
	}},
	{name: "DirectAligned", run: func(p *pair) {
		p.directWrite(1*mib, 4*kib)              // shared data
		p.directWrite(2*mib+8*kib, 8*kib)        // hole
		p.directWrite(4*mib+4*kib, 4*kib)        // unwritten
		p.directWrite(3*mib, 8*kib)              // over data that ends mid-block
		p.directWrite(1*mib, 4*kib)              // again: the block is CoW'd already
		p.write(p.now, 1*mib+100, 10)            // and a buffered write over it
		p.directWrite(6*mib-4*kib, 12*kib)       // across shared extents
		p.directWrite(8*mib-4*kib, 4*kib)        // the last block
		p.directWrite(5*mib+64*kib, 256*kib)     // a larger one
		p.directWrite(5*mib+64*kib+4*kib, 4*kib) // into what it wrote
	}},
	{name: "Direct512", run: func(p *pair) {
		// Sub-block O_DIRECT writes: what a loop device with 512-byte
		// sectors sends to its backing file.
		p.directWrite(1*mib+512, 512)
		p.directWrite(5*mib+3*512, 1024)
		p.directWrite(4*mib+512, 512) // unwritten
		p.directWrite(2*mib+512, 512) // hole
		p.directWrite(1*mib+512, 512) // again
		p.directWrite(6*mib+7*512, 2*512)
	}},
	{name: "RewriteCowed", run: func(p *pair) {
		p.write(p.now, 1*mib, 4*kib)
		p.sync(p.now)
		p.write(p.now, 1*mib, 4*kib)
		p.sync(p.now)
		p.write(p.now, 1*mib+1000, 10) // not synced: FIEMAP_FLAG_SYNC must flush it
		p.write(p.now, 5*mib, 64*kib)
		p.sync(p.now)
		p.write(p.now, 5*mib+32*kib, 64*kib)
	}},
	{name: "SameBytes", run: func(p *pair) {
		b := make([]byte, mib)
		if _, err := p.now.ReadAt(b, 512*kib); err != nil {
			p.t.Fatal(err)
		}
		if _, err := p.now.WriteAt(b, 512*kib); err != nil {
			p.t.Fatal(err)
		}
		p.write(p.now, 5*mib+10, 1) // and one that differs
	}},
	{name: "Shrink", run: func(p *pair) {
		if err := p.now.Truncate(5*mib + 777); err != nil {
			p.t.Fatal(err)
		}
	}},
	{name: "ShrinkThenExtend", run: func(p *pair) {
		if err := p.now.Truncate(1*mib + 100); err != nil {
			p.t.Fatal(err)
		}
		if err := p.now.Truncate(8 * mib); err != nil {
			p.t.Fatal(err)
		}
		p.write(p.now, 7*mib, 10)
	}},
	{name: "ShrinkUnalignedThenExtendByWrite", run: func(p *pair) {
		if err := p.now.Truncate(5*mib + 100); err != nil {
			p.t.Fatal(err)
		}
		p.write(p.now, 6*mib+3, 5) // extends; [5M+100, 6M+3) must read as zeros
	}},
	{name: "Grow", run: func(p *pair) {
		if err := p.now.Truncate(12*mib + 5); err != nil {
			p.t.Fatal(err)
		}
		p.write(p.now, 10*mib, 5000)
	}},
	{name: "GrowFromUnalignedBase", fill: func(p *pair) {
		p.write(p.now, 0, 3*mib+5000) // size 3M+5000: the last block is partial
		p.sync(p.now)
	}, run: func(p *pair) {
		if err := p.now.Truncate(6 * mib); err != nil {
			p.t.Fatal(err)
		}
		p.write(p.now, 3*mib+6000, 100) // in the old last block, past the old end
		p.write(p.now, 5*mib, 10)
	}},
	{name: "GrowByWritePastUnalignedEnd", fill: func(p *pair) {
		p.write(p.now, 0, 3*mib+5000)
		p.sync(p.now)
	}, run: func(p *pair) {
		p.write(p.now, 3*mib+7000, 100)
	}},
	{name: "TruncateToZeroAndRefill", run: func(p *pair) {
		if err := p.now.Truncate(0); err != nil {
			p.t.Fatal(err)
		}
		p.write(p.now, 2*mib, 100*kib)
		if err := p.now.Truncate(8 * mib); err != nil {
			p.t.Fatal(err)
		}
	}},
	{name: "FallocatePlain", run: func(p *pair) {
		p.mustFalloc(unix.FALLOC_FL_KEEP_SIZE, 2*mib, mib) // over the hole
		p.mustFalloc(unix.FALLOC_FL_KEEP_SIZE, 8*mib, mib) // past the end
		p.mustFalloc(0, 0, 9*mib+123)                      // extends
		p.mustFalloc(unix.FALLOC_FL_KEEP_SIZE, 0, 2*mib)   // over shared data: no change
	}},
	{name: "ZeroRange", run: func(p *pair) {
		p.mustFalloc(unix.FALLOC_FL_ZERO_RANGE, 1*mib, 64*kib)
		p.mustFalloc(unix.FALLOC_FL_ZERO_RANGE, 5*mib+100, 9000)                       // partial blocks
		p.mustFalloc(unix.FALLOC_FL_ZERO_RANGE, 3*mib+4000, 200)                       // inside the partial block
		p.mustFalloc(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 7*mib, 2*mib) // across the end
	}},
	{name: "PunchHole", run: func(p *pair) {
		p.mustFalloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 100, 4900)
		p.mustFalloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 6*mib+4000, 8000)
		p.mustFalloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4*mib, mib) // unwritten
	}},
	{name: "CollapseRange", run: func(p *pair) {
		if err := p.falloc(unix.FALLOC_FL_COLLAPSE_RANGE, 1*mib, 64*kib); err != nil {
			p.t.Logf("COLLAPSE_RANGE: %v (not tried here)", err)
		}
		if err := p.falloc(unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4*kib); err != nil {
			p.t.Logf("COLLAPSE_RANGE: %v", err)
		}
	}},
	{name: "InsertRange", run: func(p *pair) {
		if err := p.falloc(unix.FALLOC_FL_INSERT_RANGE, 512*kib, 128*kib); err != nil {
			p.t.Logf("INSERT_RANGE: %v (not tried here)", err)
		}
		if err := p.falloc(unix.FALLOC_FL_INSERT_RANGE, 0, 4*kib); err != nil {
			p.t.Logf("INSERT_RANGE: %v", err)
		}
	}},
	{name: "CollapseThenInsertBack", run: func(p *pair) {
		// Net size unchanged, everything after 1 MiB moved and moved back:
		// the same blocks at the same offsets, but a 64 KiB hole at 1 MiB.
		if err := p.falloc(unix.FALLOC_FL_COLLAPSE_RANGE, 1*mib, 64*kib); err != nil {
			p.t.Logf("COLLAPSE_RANGE: %v (not tried here)", err)
			return
		}
		p.mustFalloc(unix.FALLOC_FL_INSERT_RANGE, 1*mib, 64*kib)
	}},
	{name: "UnshareRange", run: func(p *pair) {
		if err := p.falloc(unix.FALLOC_FL_UNSHARE_RANGE|unix.FALLOC_FL_KEEP_SIZE, 0, 8*mib); err != nil {
			p.t.Logf("UNSHARE_RANGE: %v", err)
		}
		p.write(p.now, 6*mib, 10)
	}},
	{name: "MmapNotSynced", run: func(p *pair) {
		m, err := unix.Mmap(int(p.now.Fd()), 0, 8*mib, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			p.t.Fatal(err)
		}
		p.t.Cleanup(func() { unix.Munmap(m) })
		for _, off := range []int{100, 1*mib + 4096, 2*mib + 10, 4*mib + 5000, 3*mib + 4500, 8*mib - 1} {
			copy(m[off:], data(p.rng, 7))
		}
		// no msync: Delta flushes (FIEMAP_FLAG_SYNC)
	}},
	{name: "CloneRangeFromThird", run: func(p *pair) {
		third := openNew(p.t, filepath.Join(p.dir, "third.img"))
		p.write(third, 0, 512*kib)
		p.sync(third)
		for _, c := range [][3]int64{{1 * mib, 0, 256 * kib}, {4*mib + 64*kib, 64 * kib, 64 * kib}, {2 * mib, 128 * kib, 128 * kib}, {5 * mib, 0, 4 * kib}} {
			if err := cloneRange(p.now, c[0], third, c[1], c[2]); err != nil {
				p.t.Fatalf("FICLONERANGE %v: %v", c, err)
			}
		}
	}},
	{name: "CloneRangeFromBaseShifted", run: func(p *pair) {
		// now's blocks are base's, one range along: the same blocks, not at
		// the same offsets.
		if err := cloneRange(p.now, 64*kib, p.base, 0, 64*kib); err != nil {
			p.t.Fatal(err)
		}
		if err := cloneRange(p.now, 5*mib+4*kib, p.base, 5*mib, 1*mib); err != nil {
			p.t.Fatal(err)
		}
		// Written over, then given back base's blocks at the same offset:
		// the same again.
		p.write(p.now, 6*mib+512*kib, 64*kib)
		if err := cloneRange(p.now, 6*mib+512*kib, p.base, 6*mib+512*kib, 64*kib); err != nil {
			p.t.Fatal(err)
		}
	}},
	{name: "CloneRangeSelf", run: func(p *pair) {
		if err := cloneRange(p.now, 6*mib, p.now, 0, 128*kib); err != nil {
			p.t.Fatal(err)
		}
		if err := cloneRange(p.now, 0, p.now, 5*mib, 4*kib); err != nil {
			p.t.Fatal(err)
		}
	}},
	{name: "Dedupe", run: func(p *pair) {
		// A third file with the bytes of now at 5 MiB, deduplicated into
		// now: now's blocks there become the third file's (same bytes).
		third := openNew(p.t, filepath.Join(p.dir, "third.img"))
		b := make([]byte, 64*kib)
		if _, err := p.now.ReadAt(b, 5*mib); err != nil {
			p.t.Fatal(err)
		}
		if _, err := third.WriteAt(b, 0); err != nil {
			p.t.Fatal(err)
		}
		p.sync(third)
		r := unix.FileDedupeRange{Src_offset: 0, Src_length: 64 * kib,
			Info: []unix.FileDedupeRangeInfo{{Dest_fd: int64(p.now.Fd()), Dest_offset: 5 * mib}}}
		if err := unix.IoctlFileDedupeRange(int(third.Fd()), &r); err != nil {
			p.t.Logf("FIDEDUPERANGE: %v", err)
		}
		p.write(p.now, 5*mib+128*kib, 10)
	}},
	{name: "PunchEverything", run: func(p *pair) {
		p.mustFalloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 8*mib)
	}},
	{name: "ManyExtentsAcrossBatches", fill: func(p *pair) {
		// 1200 one-block data extents between one-block holes.
		if err := p.now.Truncate(2 * 1200 * 4 * kib); err != nil {
			p.t.Fatal(err)
		}
		for i := range int64(1200) {
			p.write(p.now, 2*i*4*kib, 4*kib)
		}
		p.sync(p.now)
	}, run: func(p *pair) {
		// Changes at the batch boundaries (256 extents of data and as many
		// holes: the 256th extent is block 510) and into holes.
		for _, b := range []int64{508, 510, 511, 512, 1020, 1022, 1023, 1024, 1535, 2398, 2399} {
			p.write(p.now, b*4*kib+5, 1)
		}
	}},
	{name: "RandomSmallWrites", fill: func(p *pair) {
		const size = 12 * mib
		if err := p.now.Truncate(size); err != nil {
			p.t.Fatal(err)
		}
		// Fragmented: half the blocks, written in random order, flushed
		// as they go.
		for i, b := range p.rng.Perm(size / (4 * kib)) {
			if b%2 == 0 {
				continue
			}
			p.write(p.now, int64(b)*4*kib, 4*kib)
			if i%64 == 0 {
				p.sync(p.now)
			}
		}
		p.sync(p.now)
	}, run: func(p *pair) {
		const size = 12 * mib
		for i := range 3000 {
			off := p.rng.Int64N(size)
			n := 1 + p.rng.IntN(9000)
			switch k := p.rng.IntN(20); {
			case k == 0:
				p.falloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, int64(n))
			case k == 1:
				p.falloc(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, int64(n))
			case k == 2:
				p.falloc(unix.FALLOC_FL_KEEP_SIZE, off, int64(n))
			case k == 3:
				p.directWrite(off&^4095, 4*kib)
			default:
				p.write(p.now, off, min(n, int(size-off)))
			}
			if i%100 == 0 {
				p.sync(p.now)
			}
		}
	}},
}

// reflinkFilesystems are where Delta is exact: xfs with reflink, btrfs,
// btrfs compressing everything it writes, btrfs with NOCOW files (a common
// setting for volume images there).
var reflinkFilesystems = []struct {
	name, fs string
	setup    func(t *testing.T, mnt string)
}{
	{name: "xfs", fs: "xfs"},
	{name: "xfs-cowextsize", fs: "xfs", setup: func(t *testing.T, mnt string) {
		// Files inherit a 1 MiB CoW extent size hint: CoW staging extents
		// larger than what is written.
		if out, err := exec.Command("xfs_io", "-c", "cowextsize 1m", mnt).CombinedOutput(); err != nil {
			t.Fatalf("xfs_io cowextsize: %v: %s", err, out)
		}
	}},
	{name: "btrfs", fs: "btrfs"},
	{name: "btrfs-compress", fs: "btrfs", setup: compress},
	{name: "btrfs-nocow", fs: "btrfs", setup: func(t *testing.T, mnt string) {
		if out, err := exec.Command("chattr", "+C", mnt).CombinedOutput(); err != nil {
			t.Fatalf("chattr +C: %v: %s", err, out)
		}
	}},
}

// compress remounts the btrfs at mnt to compress all it writes (zstd).
func compress(t *testing.T, mnt string) {
	t.Helper()
	if err := unix.Mount("", mnt, "", unix.MS_REMOUNT, "compress-force=zstd"); err != nil {
		t.Fatalf("remount with compression: %v", err)
	}
	ms, _ := os.ReadFile("/proc/self/mounts")
	for _, l := range strings.Split(string(ms), "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[1] == mnt {
			if !strings.Contains(f[3], "compress-force=zstd") {
				t.Fatalf("%s is mounted %s: no compression", mnt, f[3])
			}
			return
		}
	}
	t.Fatalf("%s is not in /proc/self/mounts", mnt)
}

// For every case on every filesystem that shares extents: the oracle holds
// both ways and from offsets inside blocks and extents.
func TestAttackDeltaReflink(t *testing.T) {
	for _, fs := range reflinkFilesystems {
		t.Run(fs.name, func(t *testing.T) {
			testfs.RequireHost(t, "mkfs."+fs.fs)
			mnt := testfs.Filesystem(t, fs.fs, 320*mib)
			if fs.setup != nil {
				fs.setup(t, mnt)
			}
			for i, c := range reflinkCases {
				t.Run(c.name, func(t *testing.T) {
					fill := c.fill
					if fill == nil {
						fill = standard
					}
					p := newPair(t, mnt, uint64(i), fill)
					if c.name == "Fresh" && fs.name != "btrfs-compress" {
						// A fresh copy shares every block: nothing differs.
						if rs, err := walk(extent.Delta(p.base, p.now, 0, sizeOf(t, p.now)), 0, sizeOf(t, p.now)); err != nil || len(rs) != 0 {
							t.Errorf("Delta of a fresh copy = %v, %v; want nothing", rs, err)
						}
					}
					c.run(p)
					p.verify()
				})
			}
		})
	}
}

// Delta asked for less than the whole file (a size that ends inside an
// extent, a block, a batch), from offsets around batch ends.
func TestAttackDeltaPartialWindows(t *testing.T) {
	for _, fs := range []string{"xfs", "btrfs"} {
		t.Run(fs, func(t *testing.T) {
			testfs.RequireHost(t, "mkfs."+fs)
			mnt := testfs.Filesystem(t, fs, 320*mib)
			p := newPair(t, mnt, 99, func(p *pair) {
				if err := p.now.Truncate(3 * 700 * 4 * kib); err != nil {
					t.Fatal(err)
				}
				for i := range int64(700) { // data, data, hole: 700 extents
					p.write(p.now, 3*i*4*kib, 8*kib)
					p.sync(p.now)
				}
			})
			for i := int64(0); i < 700; i += 7 {
				p.write(p.now, (3*i+1)*4*kib+100, 10)
			}
			for _, b := range []int64{255*3 + 2, 256 * 3, 511*3 + 1, 512 * 3} {
				p.write(p.now, b*4*kib, 3)
			}
			nowB := readAll(t, p.now)
			for _, w := range [][2]int64{
				{0, 4 * kib * (256*3 + 1)}, {12345, 4*kib*(256*3) + 100}, {4 * kib * (255 * 3), 4 * kib * (257 * 3)},
				{4*kib*(511*3) + 1, 4*kib*(512*3) + 4095}, {4 * kib * 1000, 4*kib*1000 + 1}, {5, 6},
			} {
				checkDelta(t, "Delta(base, now) window", p.base, p.now, p.held, nowB, w[0], w[1])
			}
		})
	}
}

// The volume image written as a plinth volume is: through a loop device
// with direct I/O (4096- and 512-byte sectors), holding a filesystem whose
// files are written, overwritten, deleted and trimmed (discard punches the
// image); the snapshot taken while it is attached; Delta after detach.
func TestAttackDeltaThroughLoopDevice(t *testing.T) {
	for _, fs := range []string{"xfs", "btrfs"} {
		for _, bs := range []uint32{4096, 512} {
			t.Run(fmt.Sprintf("%s-%d", fs, bs), func(t *testing.T) {
				testfs.RequireHost(t, "mkfs."+fs, "mkfs.ext4", "fstrim", "blkdiscard")
				mnt := testfs.Filesystem(t, fs, 320*mib)
				p := newPair(t, mnt, uint64(bs), func(p *pair) {
					if err := p.now.Truncate(64 * mib); err != nil {
						t.Fatal(err)
					}
				})
				// newPair took a snapshot of an empty image; take it again below.
				img := p.now.Name()
				loops := mount.NewLoop("/sys", "/dev")
				loops.BlockSize = bs
				dev, err := loops.Attach(img, false)
				if err != nil {
					t.Fatal(err)
				}
				detached := false
				t.Cleanup(func() {
					if !detached {
						testfs.TearDown(t, mnt)
					}
				})
				if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", dev).CombinedOutput(); err != nil {
					t.Fatalf("mkfs.ext4: %v: %s", err, out)
				}
				inner := filepath.Join(p.dir, "inner")
				if err := os.Mkdir(inner, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mount(dev, inner, "ext4", 0, "discard"); err != nil {
					t.Fatalf("mount %s: %v", dev, err)
				}
				for i := range 40 {
					p.writeFile(filepath.Join(inner, fmt.Sprintf("f%d", i)), 1+p.rng.IntN(600*kib))
				}
				syncfs(t, inner)
				// The snapshot, of the live volume.
				os.Remove(filepath.Join(p.dir, "snap.img"))
				p.base.Close()
				p.snapshot()
				for i := range 40 {
					name := filepath.Join(inner, fmt.Sprintf("f%d", i))
					switch i % 4 {
					case 0: // overwritten in place
						f, err := os.OpenFile(name, os.O_RDWR, 0)
						if err != nil {
							t.Fatal(err)
						}
						st, _ := f.Stat()
						if st.Size() > 0 {
							off := p.rng.Int64N(st.Size())
							if _, err := f.WriteAt(data(p.rng, 1+p.rng.IntN(9000)), off); err != nil {
								t.Fatal(err)
							}
						}
						f.Close()
					case 1: // deleted (discarded: a hole punched in the image)
						os.Remove(name)
					case 2: // appended to
						f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
						if err != nil {
							t.Fatal(err)
						}
						f.Write(data(p.rng, 1+p.rng.IntN(50*kib)))
						f.Close()
					}
				}
				for i := range 10 {
					p.writeFile(filepath.Join(inner, fmt.Sprintf("g%d", i)), 1+p.rng.IntN(300*kib))
				}
				syncfs(t, inner)
				if out, err := exec.Command("fstrim", inner).CombinedOutput(); err != nil {
					t.Logf("fstrim: %v: %s", err, out)
				}
				if err := unix.Unmount(inner, 0); err != nil {
					t.Fatal(err)
				}
				// Raw writes to the device past the inner filesystem's use:
				// sector-sized direct writes, a zeroout, a discard.
				rawDirect(t, dev, p.rng, int64(bs))
				if out, err := exec.Command("blkdiscard", "-z", "-o", "33554432", "-l", "1048576", dev).CombinedOutput(); err != nil {
					t.Logf("blkdiscard -z: %v: %s", err, out)
				}
				if out, err := exec.Command("blkdiscard", "-o", "50331648", "-l", "2097152", dev).CombinedOutput(); err != nil {
					t.Logf("blkdiscard: %v: %s", err, out)
				}
				if err := loops.Detach(img); err != nil {
					t.Fatal(err)
				}
				detached = true
				p.verify()
			})
		}
	}
}

func (p *pair) writeFile(name string, n int) {
	p.t.Helper()
	if err := os.WriteFile(name, data(p.rng, n), 0o600); err != nil {
		p.t.Fatal(err)
	}
}

func syncfs(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}

// rawDirect writes sector-sized runs straight to dev with O_DIRECT, in
// the last 16 MiB of a 64 MiB device.
func rawDirect(t *testing.T, dev string, rng *rand.Rand, sector int64) {
	t.Helper()
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 64*kib, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	for range 200 {
		n := sector * (1 + rng.Int64N(8))
		off := 48*mib + rng.Int64N(16*mib-n)/sector*sector
		copy(buf, data(rng, int(n)))
		if _, err := unix.Pwrite(fd, buf[:n], off); err != nil {
			t.Fatalf("write %s at %d: %v", dev, off, err)
		}
	}
	if err := unix.Fsync(fd); err != nil {
		t.Fatal(err)
	}
}

// Without reflinks (ext4; xfs made without them) the snapshot is a full
// copy: Delta is then every data range of either file, and must still
// cover what changed.
func TestAttackDeltaWithoutReflinks(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs-noreflink"} {
		t.Run(fs, func(t *testing.T) {
			var mnt string
			if fs == "ext4" {
				testfs.RequireHost(t, "mkfs.ext4")
				mnt = testfs.Filesystem(t, "ext4", 256*mib)
			} else {
				testfs.RequireHost(t, "mkfs.xfs")
				mnt = noReflinkXFS(t)
			}
			p := &pair{t: t, dir: mnt, rng: rand.New(rand.NewPCG(2, 2))}
			p.now = openNew(t, filepath.Join(mnt, "vol.img"))
			standard(p)
			// The snapshot: a sparse copy (what the pool does without FICLONE).
			p.base = openNew(t, filepath.Join(mnt, "snap.img"))
			sparseCopy(t, p.base, p.now)
			p.held = readAll(t, p.base)
			if shared, err := extent.Shared(p.now); err != nil || shared {
				t.Errorf("Shared = %v, %v; want false", shared, err)
			}
			p.write(p.now, 12345, 100)
			p.write(p.now, 2*mib+5, 10)
			p.write(p.now, 4*mib+5, 10) // into unwritten, not synced
			p.mustFalloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 6*mib, 8192)
			p.mustFalloc(unix.FALLOC_FL_ZERO_RANGE, 7*mib+100, 100)
			p.verify()
		})
	}
}

func noReflinkXFS(t *testing.T) string {
	t.Helper()
	return testfs.FilesystemWith(t, "xfs", 320*mib, "-q", "-m", "reflink=0")
}

func sparseCopy(t *testing.T, out, in *os.File) {
	t.Helper()
	size := sizeOf(t, in)
	for r, err := range extent.Allocated(in, 0, size) {
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, r.Len)
		if _, err := in.ReadAt(b, r.Off); err != nil {
			t.Fatal(err)
		}
		if _, err := out.WriteAt(b, r.Off); err != nil {
			t.Fatal(err)
		}
	}
	if err := out.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		t.Fatal(err)
	}
}

// Allocated must cover every byte that does not read as zero, from any
// offset and to any size (past the end too), with unwritten extents
// holding data not yet flushed, and end.
func TestAttackAllocated(t *testing.T) {
	for _, fs := range []string{"xfs", "btrfs", "ext4", "btrfs-compress", "tmpfs"} {
		t.Run(fs, func(t *testing.T) {
			var mnt string
			switch fs {
			case "tmpfs":
				d, err := os.MkdirTemp("/dev/shm", "attack")
				if err != nil {
					t.Skip(err)
				}
				t.Cleanup(func() { os.RemoveAll(d) })
				mnt = d
			case "btrfs-compress":
				testfs.RequireHost(t, "mkfs.btrfs")
				mnt = testfs.Filesystem(t, "btrfs", 320*mib)
				compress(t, mnt)
			default:
				testfs.RequireHost(t, "mkfs."+fs)
				mnt = testfs.Filesystem(t, fs, 320*mib)
			}
			p := &pair{t: t, dir: mnt, rng: rand.New(rand.NewPCG(3, 3))}
			p.now = openNew(t, filepath.Join(mnt, "vol.img"))
			const size = 8*mib + 1234
			if err := p.now.Truncate(size); err != nil {
				t.Fatal(err)
			}
			p.write(p.now, 0, 100)
			p.write(p.now, 100*kib, 300*kib)
			p.sync(p.now)
			p.falloc(unix.FALLOC_FL_KEEP_SIZE, 1*mib, 2*mib)
			p.write(p.now, 1*mib+5000, 10)     // into unwritten, not synced
			p.write(p.now, 2*mib+4096*3, 4096) // the same
			p.write(p.now, 4*mib, 1)
			for i := range int64(600) { // many extents, some not synced
				p.write(p.now, 5*mib+i*8*kib+7, 5)
				if i == 300 {
					p.sync(p.now)
				}
			}
			p.write(p.now, size-1, 1)
			b := readAll(t, p.now)
			nonzero := diffs(b, nil, int64(len(b)))
			for _, from := range append(froms(size), size, size+5) {
				for _, end := range []int64{size, size + 100*mib, size - 1, 1*mib + 5005, 5*mib + 300*8*kib + 9} {
					if end <= from {
						continue
					}
					rs, err := walk(extent.Allocated(p.now, from, end), from, end)
					if err != nil {
						t.Errorf("Allocated(%d, %d): %v", from, end, err)
						continue
					}
					if missed, n := uncovered(nonzero, rs, from, end); n > 0 {
						t.Errorf("Allocated(%d, %d) misses %d bytes that are not zero: %v; it yields %v", from, end, n, missed, rs)
					}
				}
			}
		})
	}
}

// Shared finds a shared block that only the last of many extents (past
// the first FIEMAP batch) holds, and says false once nothing is shared.
func TestAttackShared(t *testing.T) {
	for _, fs := range []string{"xfs", "btrfs"} {
		t.Run(fs, func(t *testing.T) {
			testfs.RequireHost(t, "mkfs."+fs)
			mnt := testfs.Filesystem(t, fs, 320*mib)
			p := &pair{t: t, dir: mnt, rng: rand.New(rand.NewPCG(4, 4))}
			p.now = openNew(t, filepath.Join(mnt, "vol.img"))
			for i := range int64(700) {
				p.write(p.now, 2*i*4*kib, 4*kib)
			}
			p.sync(p.now)
			third := openNew(t, filepath.Join(mnt, "third.img"))
			p.write(third, 0, 4*kib)
			p.sync(third)
			if shared, err := extent.Shared(p.now); err != nil || shared {
				t.Fatalf("Shared before = %v, %v; want false", shared, err)
			}
			if err := cloneRange(p.now, 2*699*4*kib+4*kib, third, 0, 4*kib); err != nil {
				t.Fatal(err)
			}
			type res struct {
				ok  bool
				err error
			}
			ch := make(chan res, 1)
			go func() { ok, err := extent.Shared(p.now); ch <- res{ok, err} }()
			select {
			case r := <-ch:
				if r.err != nil || !r.ok {
					t.Errorf("Shared with the last block shared = %v, %v; want true", r.ok, r.err)
				}
			case <-time.After(walkDeadline):
				t.Fatal("Shared did not end")
			}
		})
	}
}

// A file whose size is not a multiple of the block reads as zeros past
// its size, whatever its last block holds there. btrfs does not zero that
// part of the last block when it truncates down (it does when the file
// grows again): a snapshot taken after a shrink shares its last block,
// whose tail still holds the old bytes, with the volume. A volume then
// restored from a snapshot taken before the shrink has that block back at
// the same offset, and reads its tail: Delta sees the same block on both
// sides, where the snapshot reads zeros and the volume data.
func TestAttackDeltaPartialLastBlock(t *testing.T) {
	for _, fs := range []string{"xfs", "btrfs"} {
		t.Run(fs, func(t *testing.T) {
			testfs.RequireHost(t, "mkfs."+fs)
			mnt := testfs.Filesystem(t, fs, 320*mib)
			p := &pair{t: t, dir: mnt, rng: rand.New(rand.NewPCG(5, 5))}
			p.now = openNew(t, filepath.Join(mnt, "vol.img"))
			p.write(p.now, 0, 8*mib)
			p.sync(p.now)
			old := openNew(t, filepath.Join(mnt, "old.img")) // a snapshot before the shrink
			if err := unix.IoctlFileClone(int(old.Fd()), int(p.now.Fd())); err != nil {
				t.Fatal(err)
			}
			if err := p.now.Truncate(5*mib + 777); err != nil {
				t.Fatal(err)
			}
			p.snapshot() // the snapshot the receiver is filled from: 5 MiB + 777 bytes
			// The volume restored from the older snapshot.
			if err := unix.IoctlFileClone(int(p.now.Fd()), int(old.Fd())); err != nil {
				t.Fatal(err)
			}
			p.verify()
		})
	}
}

// The snapshot on another filesystem than the volume (an administrator
// mounts a bigger disk at the pool's snapshots directory): FICLONE fails
// with EXDEV and the pool makes a sparse copy. The two files' FIEMAP
// addresses are then of two devices: block N of one is not block N of the
// other, yet two filesystems made alike place a file's data alike. A
// volume overwritten in place (xfs and ext4 overwrite blocks no snapshot
// shares) keeps its addresses, which equal the copy's: Delta sees the same
// blocks.
func TestAttackDeltaAcrossFilesystems(t *testing.T) {
	for _, fs := range []string{"xfs", "ext4"} {
		t.Run(fs, func(t *testing.T) {
			testfs.RequireHost(t, "mkfs."+fs)
			volumes := testfs.Filesystem(t, fs, 320*mib)
			snapshots := testfs.Filesystem(t, fs, 320*mib)
			p := &pair{t: t, dir: volumes, rng: rand.New(rand.NewPCG(6, 6))}
			p.now = openNew(t, filepath.Join(volumes, "vol.img"))
			if err := p.now.Truncate(8 * mib); err != nil {
				t.Fatal(err)
			}
			p.write(p.now, 0, 4*mib)
			p.sync(p.now)
			p.base = openNew(t, filepath.Join(snapshots, "snap.img"))
			if err := unix.IoctlFileClone(int(p.base.Fd()), int(p.now.Fd())); !errors.Is(err, unix.EXDEV) {
				t.Fatalf("FICLONE across filesystems: %v; want EXDEV", err)
			}
			sparseCopy(t, p.base, p.now)
			p.held = readAll(t, p.base)
			p.write(p.now, 1*mib, mib) // in place
			p.sync(p.now)
			p.verify()
		})
	}
}

// The snapshots directory a btrfs subvolume of the volumes' filesystem
// (another st_dev, the same block addresses): FICLONE works across it,
// and Delta must stay exact there.
func TestAttackDeltaAcrossBtrfsSubvolumes(t *testing.T) {
	testfs.RequireHost(t, "mkfs.btrfs", "btrfs")
	mnt := testfs.Filesystem(t, "btrfs", 320*mib)
	sub := filepath.Join(mnt, "snapshots")
	if out, err := exec.Command("btrfs", "-q", "subvolume", "create", sub).CombinedOutput(); err != nil {
		t.Fatalf("btrfs subvolume create: %v: %s", err, out)
	}
	p := &pair{t: t, dir: mnt, rng: rand.New(rand.NewPCG(7, 7))}
	p.now = openNew(t, filepath.Join(mnt, "vol.img"))
	standard(p)
	p.dir = sub
	p.snapshot()
	var a, b unix.Stat_t
	unix.Fstat(int(p.now.Fd()), &a)
	unix.Fstat(int(p.base.Fd()), &b)
	rs, err := walk(extent.Delta(p.base, p.now, 0, 8*mib), 0, 8*mib)
	t.Logf("st_dev %d and %d; Delta of the fresh copy: %v, %v", a.Dev, b.Dev, rs, err)
	p.write(p.now, 12345, 100)
	p.mustFalloc(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 6*mib, 8192)
	p.verify()
}
