package mount

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLoopLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	l := NewLoop("/sys", "/dev")
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 8<<20)
	if dev, err := l.Find(img); err != nil || dev != "" {
		t.Fatalf("Find before attach = %q, %v", dev, err)
	}
	dev, err := l.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Detach(img) })
	if again, err := l.Attach(img, false); err != nil || again != dev {
		t.Fatalf("second Attach = %q, %v; want the same %s", again, err, dev)
	}
	if size, err := DeviceSize(dev); err != nil || size != 8<<20 {
		t.Fatalf("size = %d, %v", size, err)
	}
	b, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "queue/logical_block_size"))
	if string(b) != "4096\n" {
		t.Errorf("logical block size %q, want 4096", b)
	}
	os.Truncate(img, 16<<20)
	if err := l.Refresh(img); err != nil {
		t.Fatal(err)
	}
	if size, _ := DeviceSize(dev); size != 16<<20 {
		t.Errorf("size after refresh = %d, want 16Mi", size)
	}
	// Another file with the same name elsewhere is not this attachment.
	other := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(other, nil, 0o600)
	if d, _ := l.Find(other); d != "" {
		t.Errorf("Find(%s) = %s, a different file", other, d)
	}
	// Held open, the device cannot go: Detach says so instead of lying.
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Detach(img) }()
	f.Close() // released within the wait: Detach then succeeds
	if err := <-done; err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if d, _ := l.Find(img); d != "" {
		t.Fatalf("still attached as %s", d)
	}
	if err := l.Detach(img); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if err := l.Detach(filepath.Join(t.TempDir(), "missing.img")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Detach of a missing file: %v", err)
	}
}

// TestFindAfterRebind: a loop device freed and bound again to another
// file (the kernel hands out the lowest free number, so the same device)
// is found for the new file and no longer for the old one, though the
// device each file was found at is remembered: the rebinding is done by
// another Loop (another process), which this one hears nothing of.
func TestFindAfterRebind(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	l, other := NewLoop("/sys", "/dev"), NewLoop("/sys", "/dev")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, f := range []string{a, b} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Truncate(f, 8<<20)
		t.Cleanup(func() { NewLoop("/sys", "/dev").Detach(f) })
	}
	for i := 0; i < 5; i++ {
		first, second := a, b
		if i%2 == 1 {
			first, second = b, a
		}
		dev, err := l.Attach(first, false)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := l.Find(first); err != nil || got != dev {
			t.Fatalf("round %d: Find(%s) = %q, %v; want %s", i, first, got, err, dev)
		}
		if err := other.Detach(first); err != nil {
			t.Fatal(err)
		}
		dev2, err := other.Attach(second, false)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := l.Find(second); err != nil || got != dev2 {
			t.Fatalf("round %d: Find(%s) = %q, %v; want %s (%s before)", i, second, got, err, dev2, dev)
		}
		if got, err := l.Find(first); err != nil || got != "" {
			t.Fatalf("round %d: Find(%s) after it was freed = %q, %v", i, first, got, err)
		}
		if err := l.Detach(second); err != nil {
			t.Fatal(err)
		}
	}
}

// TestKnown: Known names the devices a Loop attached (read-write and
// read-only), drops one freed behind its back, and a Loop that has seen
// nothing yet (a restarted process) scans and finds them all.
func TestKnown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real loop devices")
	}
	l := NewLoop("/sys", "/dev")
	img := filepath.Join(t.TempDir(), "v.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 8<<20)
	t.Cleanup(func() { NewLoop("/sys", "/dev").Detach(img) })
	if devs, err := l.Known(img); err != nil || len(devs) != 0 {
		t.Fatalf("Known before attach = %v, %v", devs, err)
	}
	rw, err := l.Attach(img, false)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := l.Attach(img, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{rw: false, ro: true}
	check := func(who *Loop, want map[string]bool) {
		t.Helper()
		devs, err := who.Known(img)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, d := range devs {
			got[d.Path] = d.ReadOnly
		}
		if len(got) != len(want) {
			t.Fatalf("Known = %v, want %v", got, want)
		}
		for d, r := range want {
			if g, ok := got[d]; !ok || g != r {
				t.Fatalf("Known = %v, want %v", got, want)
			}
		}
	}
	check(l, want)
	check(NewLoop("/sys", "/dev"), want) // a fresh process scans
	if err := NewLoop("/sys", "/dev").DetachDevice(img, ro); err != nil {
		t.Fatal(err)
	}
	delete(want, ro)
	check(l, want)
	if err := l.Detach(img); err != nil {
		t.Fatal(err)
	}
	check(l, map[string]bool{})
	check(NewLoop("/sys", "/dev"), map[string]bool{})
}
