package standalone

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/test/testenv"
)

// TestSockets: the CSI socket has no world access; a stale socket left by
// a dead plinth is replaced; anything else at the path is refused and left
// alone.
func TestSockets(t *testing.T) {
	testenv.RequireHost(t)
	root := t.TempDir()
	cfg := app.StandaloneConfig{CSIConfig: app.CSIConfig{Root: filepath.Join(root, "state"), AllowedPaths: []string{root}, NodeID: "node-1", DriverName: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", SysfsRoot: "/sys", DevRoot: "/dev"}}

	cfg.Endpoint = "unix://" + filepath.Join(root, "stale.sock")
	l, err := net.Listen("unix", filepath.Join(root, "stale.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file nobody serves, as after a SIGKILL
	sock := testenv.Standalone(t, cfg)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("CSI socket mode %v: want a socket without world access", fi.Mode())
	}
	if _, err := testenv.Dial(t, sock).Probe(context.Background(), nil); err != nil {
		t.Fatalf("probe over the replaced socket: %v", err)
	}

	// A regular file where the socket should be: refused, untouched.
	notSock := filepath.Join(root, "precious")
	os.WriteFile(notSock, []byte("not a socket"), 0o644)
	cfg2 := cfg
	cfg2.Endpoint = "unix://" + notSock
	cfg2.Root = filepath.Join(root, "state2")
	if err := cfg2.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := app.RunStandalone(context.Background(), cfg2); err == nil {
		t.Fatal("plinth served over a regular file")
	}
	if b, _ := os.ReadFile(notSock); string(b) != "not a socket" {
		t.Fatalf("the file at the endpoint changed: %q", b)
	}
}
