package transfer

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/test/testfs"
)

// TestBenchTransfer (make bench; PLINTH_BENCH=1) measures the transfer
// service over the loopback against cp --sparse=always of the same image
// between two directories of this machine, in interleaved rounds (A B A
// B ...), and what it sends: a 1 GiB image holding 100 MiB, and a sync
// after 1% of it changed.
func TestBenchTransfer(t *testing.T) {
	if os.Getenv("PLINTH_BENCH") == "" {
		t.Skip("PLINTH_BENCH=1 (make bench)")
	}
	dir := t.TempDir()
	const size = 1 << 30
	// A: 512 MiB of data in a 1 GiB image (rate).
	dense := filepath.Join(dir, "dense.img")
	writeRandom(t, dense, size, 0, 512<<20, 1)
	var cpRates, xferRates, ratios []float64
	rounds := 3
	for r := range rounds {
		// cp
		out := filepath.Join(dir, fmt.Sprintf("cp-%d.img", r))
		dropCaches()
		start := time.Now()
		if b, err := exec.Command("cp", "--sparse=always", dense, out).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, b)
		}
		syncFile(t, out)
		cpRate := 512 / time.Since(start).Seconds()
		os.Remove(out)
		// transfer
		dropCaches()
		w := newWorld(t, dense)
		w.server.ChunkBytes = DefaultChunkBytes
		d := dest(filepath.Join(dir, fmt.Sprintf("x-%d", r)))
		os.MkdirAll(filepath.Dir(d.Image), 0o755)
		start = time.Now()
		if err := (&Client{Identity: w.b, Peers: w.book, CommitEvery: benchCommit}).Fill(context.Background(), "a", "pv-target", d, nil); err != nil {
			t.Fatal(err)
		}
		d.Close()
		xRate := 512 / time.Since(start).Seconds()
		os.Remove(d.Image)
		cpRates, xferRates = append(cpRates, cpRate), append(xferRates, xRate)
		ratios = append(ratios, xRate/cpRate)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nTransfer rate: 512 MiB of data in a 1 GiB image, %d rounds interleaved A B (page cache dropped before each)\n", rounds)
	fmt.Fprintf(&b, "  A  cp --sparse=always, one directory to another   %7.0f MiB/s (median)\n", median(cpRates))
	fmt.Fprintf(&b, "  B  plinth transfer, TLS 1.3 over 127.0.0.1       %7.0f MiB/s (median)\n", median(xferRates))
	fmt.Fprintf(&b, "  B/A %.2f (median of the per-round ratios)\n", median(ratios))

	// Sparse: 1 GiB holding 100 MiB.
	sparse := filepath.Join(dir, "sparse.img")
	writeRandom(t, sparse, size, 0, 0, 0)
	for i := range 10 {
		writeRandom(t, sparse, size, int64(i)*100<<20, 10<<20, 2+i)
	}
	w := newWorld(t, sparse)
	w.server.ChunkBytes = DefaultChunkBytes
	m := &meter{}
	w.server.Meter = m
	d := dest(filepath.Join(dir, "s"))
	os.MkdirAll(filepath.Dir(d.Image), 0o755)
	start := time.Now()
	if err := (&Client{Identity: w.b, Peers: w.book}).Fill(context.Background(), "a", "pv-target", d, nil); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	d.Close()
	fmt.Fprintf(&b, "\nSparse: a 1 GiB image holding 100 MiB (10 regions of 10 MiB)\n")
	fmt.Fprintf(&b, "  sent %d MiB (%.1f%% of the image), in %s; the copy allocates %d MiB\n", m.sent.Load()>>20,
		100*float64(m.sent.Load())/size, full.Round(time.Millisecond), mustStat(t, d.Image)>>20)

	// Sync: 1% of the image (10 MiB in 1 MiB pieces) changed since, on a
	// filesystem without reflinks (the bytes are compared) and on xfs with
	// them (the extent maps say what changed).
	fmt.Fprintf(&b, "\nFinal sync: the same image after 10 MiB (1%%) changed in 10 places (the first copy: %d MiB in %s)\n",
		m.sent.Load()>>20, full.Round(time.Millisecond))
	for _, fs := range []string{"tmp", "xfs"} {
		sdir := t.TempDir()
		how := "no reflinks: both images read and compared"
		if fs == "xfs" {
			testfs.RequireHost(t, "mkfs.xfs")
			sdir = testfs.Filesystem(t, "xfs", 3<<30)
			how = "xfs, the base a reflink copy: the extent maps (FIEMAP) say what changed"
		}
		base := filepath.Join(sdir, "base.img")
		if out, err := exec.Command("cp", "--sparse=always", sparse, base).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		now := filepath.Join(sdir, "now.img")
		args := []string{"--sparse=always", "--reflink=never", base, now}
		if fs == "xfs" {
			args = []string{"--reflink=always", base, now}
		}
		if out, err := exec.Command("cp", args...).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		for i := range 10 {
			writeRandom(t, now, size, int64(i)*97<<20+12345, 1<<20, 100+i)
		}
		held := filepath.Join(dir, "held-"+fs+".img")
		if out, err := exec.Command("cp", "--sparse=always", "--reflink=never", sparse, held).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		dropCaches()
		ws := newWorld(t, now)
		ws.server.ChunkBytes = DefaultChunkBytes
		ws.server.Source.(*grants).base = base
		ms := &meter{}
		ws.server.Meter = ms
		sd := &SyncDestination{Image: held, Progress: filepath.Join(dir, "sync-"+fs+".json")}
		start = time.Now()
		if err := (&Client{Identity: ws.b, Peers: ws.book}).Fill(context.Background(), "a", "pv-target", sd, nil); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		sd.Close()
		if sumOf(t, now) != sumOf(t, held) {
			t.Fatal("the synced image differs")
		}
		fmt.Fprintf(&b, "  %-4s sent %5.1f MiB in %6s (%s)\n", fs, float64(ms.sent.Load())/(1<<20), took.Round(time.Millisecond), how)
		os.Remove(held)
	}
	t.Log(b.String())
	fmt.Println(b.String())
}

var benchCommit = int64(0) // the client's default: a commit every 64 MiB or 2 s

func sumOf(t *testing.T, path string) [32]byte { return sum(t, path) }

// writeRandom writes n random bytes at off of a size-byte file (made
// sparse when missing).
func writeRandom(t *testing.T, path string, size, off, n int64, _ int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, _ := f.Stat(); st.Size() != size {
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 1<<20)
	for done := int64(0); done < n; done += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), n-done)]
		rand.Read(p)
		if _, err := f.WriteAt(p, off+done); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func syncFile(t *testing.T, path string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Sync()
	f.Close()
}

// dropCaches empties the page cache (root only; a no-op elsewhere).
func dropCaches() {
	_ = exec.Command("sync").Run()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

func median(v []float64) float64 {
	s := append([]float64{}, v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
