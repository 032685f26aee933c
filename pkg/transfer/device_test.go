package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/test/testfs"
)

// A whole disk goes to another disk through the service: only its chunks
// that hold data travel, and the receiving disk, full of an earlier
// tenant's bytes, ends up with exactly the sender's (what was not sent
// reads as zeros); a second fill of the same content resumes, sending
// nothing.
func TestFillDeviceFromDevice(t *testing.T) {
	testfs.RequireHost(t)
	const size = 32 << 20
	src, dst := testfs.Loop(t, size), testfs.Loop(t, size)
	data := make([]byte, 3<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	writeDev(t, src, data, 5<<20)
	junk := bytes.Repeat([]byte{0x5a}, 8<<20)
	writeDev(t, dst, junk, 0)
	writeDev(t, dst, junk, 20<<20)

	w := newWorld(t, src)
	m := &meter{}
	w.server.Meter = m
	open := func() (*os.File, error) {
		return os.OpenFile(dst, os.O_RDWR|unix.O_EXCL, 0)
	}
	progress := t.TempDir() + "/progress.json"
	d := &DeviceDestination{Open: open, Progress: progress}
	c := &Client{Identity: w.b, Peers: w.book, Meter: m}
	if err := c.Fill(context.Background(), "a", "pv-target", d, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	a, b := readDev(t, src, size), readDev(t, dst, size)
	if !bytes.Equal(a, b) {
		t.Fatal("the receiving disk does not hold the sending disk's bytes")
	}
	if sent := m.sent.Load(); sent < int64(len(data)) || sent > int64(len(data))+2<<20 {
		t.Errorf("sent %d bytes for %d of data on a %d-byte disk", sent, len(data), size)
	}
	d2 := &DeviceDestination{Open: open, Progress: progress}
	defer d2.Close()
	before := m.sent.Load()
	if err := c.Fill(context.Background(), "a", "pv-target", d2, nil); err != nil {
		t.Fatal(err)
	}
	if again := m.sent.Load() - before; again != 0 {
		t.Errorf("a fill of content already in place sent %d bytes", again)
	}
}

func writeDev(t *testing.T, dev string, p []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

func readDev(t *testing.T, dev string, size int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}
