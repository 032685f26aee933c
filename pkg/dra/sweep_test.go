package dra

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// staleSocket leaves a socket file at p that no process serves (what a
// killed instance leaves behind).
func staleSocket(t *testing.T, p string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

// liveSocket serves p until the test ends.
func liveSocket(t *testing.T, p string) {
	t.Helper()
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// The sockets of earlier instances that no process serves go; everything
// else stays: a live instance's, this instance's own names, other drivers'
// and the CSI driver's registration, files that are not sockets, and
// hashed names that cannot be told apart from another driver's.
func TestSweepStaleSockets(t *testing.T) {
	k, err := os.MkdirTemp("/tmp", "sw") // short: socket paths have 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(k) })
	const uid, other, dead = "0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7", "16fd2706-8baf-433b-82eb-8c7fada847da"
	d := &Driver{cfg: Config{DriverName: "plinth.example.com", KubeletDir: k, PodUID: uid}}
	reg, data := filepath.Join(k, "plugins_registry"), d.dataDir()
	for _, dir := range []string{reg, data} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	gone := []string{
		filepath.Join(data, "dra-"+dead+".sock"),
		filepath.Join(data, "dra.sock"), // v0.1.0's, killed
		filepath.Join(reg, "plinth.example.com-"+dead+"-reg.sock"),
		filepath.Join(reg, "plinth.example.com-dra-reg.sock"),
		filepath.Join(reg, "plinth.example.com-AbCdEfGhIj_-reg.sock"), // a hashed UID
	}
	stays := []string{
		filepath.Join(data, "dra-"+uid+".sock"), // its own, stale from a restart of the container: the library's to replace
		filepath.Join(reg, "plinth.example.com-"+uid+"-reg.sock"),
		filepath.Join(reg, "plinth.example.com-reg.sock"),         // the CSI driver's
		filepath.Join(reg, "other.example.com-"+dead+"-reg.sock"), // another driver's
		filepath.Join(reg, "plinth.example.com-foo-reg.sock"),     // another driver named plinth.example.com-foo
		filepath.Join(reg, "dra-AAAAAAAAAAAAAAAAAAAAAA-reg.sock"), // a hash of driver and UID: whose?
	}
	for _, p := range append(append([]string{}, gone...), stays...) {
		staleSocket(t, p)
	}
	live := []string{filepath.Join(data, "dra-"+other+".sock"), filepath.Join(reg, "plinth.example.com-"+other+"-reg.sock")}
	for _, p := range live {
		liveSocket(t, p)
	}
	notSocket := filepath.Join(data, "dra-"+dead+"x.sock")
	if err := os.WriteFile(notSocket, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.sweepStale()
	for _, p := range gone {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s: a stale socket of this driver stayed", p)
		}
	}
	for _, p := range append(append(stays, live...), notSocket) {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: removed (%v), want it left", p, err)
		}
	}
}
