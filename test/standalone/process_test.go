package standalone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/test/testenv"
)

// Around the process: what a second plinth, a left-over socket or a
// missing disk must not be able to do. Every plinth here is a real child
// process (testenv.StartChild), as an operator's would be.

// childArgs are the flags of a plinth standalone on root serving sock.
func childArgs(root, sock string, extra ...string) []string {
	return append([]string{"--endpoint", "unix://" + sock, "--root", root, "--node-id", "node-1",
		"--allowed-path", filepath.Dir(root), "--metrics-address", "", "--v=2"}, extra...)
}

// startServing starts a plinth standalone child serving sock; the test
// stops it (SIGTERM) at the end.
func startServing(t *testing.T, args []string, sock string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "plinth.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := testenv.StartChild(t, sock, args, logf)
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
	})
	return cmd
}

// runRefused runs a plinth standalone child that must refuse to start:
// exit non-zero within 30 s, and serving (polled) must never turn true. A
// child that serves or still runs then fails the test and is stopped with
// SIGTERM, as an operator would stop it. It returns the child's output.
func runRefused(t *testing.T, args []string, serving func() bool) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "PLINTH_TEST_STANDALONE=1")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("plinth exited 0; want a refusal. Output:\n%s", out.String())
			}
			return out.String()
		case <-tick.C:
			if !serving() {
				continue
			}
			t.Errorf("the plinth that should refuse to start serves")
		case <-deadline:
			t.Errorf("plinth did not refuse to start within 30s")
		}
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
		return out.String()
	}
}

// answers reports whether something listens on the unix socket at path.
func answers(path string) func() bool {
	return func() bool {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
}

// tree is every file and directory under dir with its mode, size, mtime
// and (for files up to 1 MiB) a hash of its content.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		v := fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() && fi.Size() <= 1<<20 {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffTrees(before, after map[string]string) []string {
	var d []string
	for p, v := range before {
		if after[p] != v {
			d = append(d, fmt.Sprintf("%s: %q -> %q", p, v, after[p]))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			d = append(d, p+": new")
		}
	}
	return d
}

func probe(t *testing.T, c *testenv.Client) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Probe(ctx, &csi.ProbeRequest{})
	return err
}

func createVol(t *testing.T, c *testenv.Client, name string, size int64) (*csi.CreateVolumeResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{testenv.MountCap("ext4")}})
}

// TestSecondProcessSameRoot: a second plinth on a root another one uses
// refuses to start, naming the root and the holder's pid, and changes
// nothing there; the first keeps serving with its records intact. (Before:
// both served the same records, and the same volume name could be created
// at two sizes, one by each.)
func TestSecondProcessSameRoot(t *testing.T) {
	testenv.RequireHost(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "state")
	sock1, sock2 := filepath.Join(dir, "first.sock"), filepath.Join(dir, "second.sock")
	first := startServing(t, childArgs(root, sock1), sock1)
	c := testenv.Dial(t, sock1)
	v1, err := createVol(t, c, "v1", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	before := tree(t, root)

	out := runRefused(t, childArgs(root, sock2), answers(sock2))
	for _, want := range []string{root, fmt.Sprintf("pid %d", first.Process.Pid)} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not name %q:\n%s", want, out)
		}
	}
	if _, err := os.Lstat(sock2); err == nil {
		t.Errorf("the refused plinth left a socket at %s", sock2)
	}
	if d := diffTrees(before, tree(t, root)); len(d) > 0 {
		t.Errorf("the refused plinth changed the root:\n%s", strings.Join(d, "\n"))
	}

	if err := probe(t, c); err != nil {
		t.Fatalf("first plinth after the refusal: %v", err)
	}
	if again, err := createVol(t, c, "v1", 64<<20); err != nil || again.Volume.VolumeId != v1.Volume.VolumeId {
		t.Errorf("v1 again: %v %v", again, err)
	}
	if _, err := createVol(t, c, "v2", 32<<20); err != nil {
		t.Errorf("create on the first plinth after the refusal: %v", err)
	}
}

// TestLiveSocketKept: a plinth whose endpoint is a socket another live
// plinth serves refuses to start and leaves that socket alone; the first
// is still reachable after the second exited. (Before: the second replaced
// the socket as "stale" and removed it on exit, leaving the first running
// but unreachable.)
func TestLiveSocketKept(t *testing.T) {
	testenv.RequireHost(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")
	startServing(t, childArgs(filepath.Join(dir, "state1"), sock), sock)
	var st unix.Stat_t
	if err := unix.Lstat(sock, &st); err != nil {
		t.Fatal(err)
	}

	replaced := func() bool {
		var now unix.Stat_t
		return unix.Lstat(sock, &now) == nil && now.Ino != st.Ino
	}
	out := runRefused(t, childArgs(filepath.Join(dir, "state2"), sock), replaced)
	if !strings.Contains(out, sock) || !strings.Contains(out, "refusing to replace") {
		t.Errorf("refusal does not name the socket and say why:\n%s", out)
	}
	var after unix.Stat_t
	if err := unix.Lstat(sock, &after); err != nil || after.Ino != st.Ino || after.Dev != st.Dev {
		t.Errorf("the live socket was replaced or removed (%v)", err)
	}
	if err := probe(t, testenv.Dial(t, sock)); err != nil {
		t.Errorf("first plinth unreachable after the second exited: %v", err)
	}
}

// TestStaleSocketAfterKill: after a SIGKILL the socket file is left with
// nobody listening; a restarted plinth on the same root and endpoint
// replaces it and serves (the root's lock died with the process).
func TestStaleSocketAfterKill(t *testing.T) {
	testenv.RequireHost(t)
	dir := t.TempDir()
	root, sock := filepath.Join(dir, "state"), filepath.Join(dir, "csi.sock")
	first := startServing(t, childArgs(root, sock), sock)
	c := testenv.Dial(t, sock)
	if _, err := createVol(t, c, "v1", 64<<20); err != nil {
		t.Fatal(err)
	}
	first.Process.Kill()
	first.Wait()
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&fs.ModeSocket == 0 {
		t.Fatalf("no socket file left after SIGKILL (%v): the test needs one", err)
	}
	startServing(t, childArgs(root, sock), sock)
	if err := probe(t, c); err != nil {
		t.Fatalf("restarted plinth: %v", err)
	}
	if _, err := createVol(t, c, "v1", 64<<20); err != nil {
		t.Errorf("v1 after restart: %v", err)
	}
}

// TestPoolDirectories: a pool directory that does not exist is refused and
// not created (a disk not mounted at boot must not become a pool on the
// root filesystem); mountpoint=true refuses a plain directory and a bind
// mount of one (what a container sees at a hostPath whose disk is not
// mounted) and accepts a real filesystem mounted there.
func TestPoolDirectories(t *testing.T) {
	testenv.RequireHost(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")

	missing := filepath.Join(dir, "mnt", "fast")
	out := runRefused(t, childArgs(filepath.Join(dir, "state"), sock, "--pool", "name=fast,backend=file,dir="+missing), answers(sock))
	if want := "pool fast: directory " + missing + " does not exist; create it or mount the disk there"; !strings.Contains(out, want) {
		t.Errorf("missing pool directory: want %q in:\n%s", want, out)
	}
	if _, err := os.Lstat(filepath.Join(dir, "mnt")); err == nil {
		t.Errorf("plinth created %s", filepath.Join(dir, "mnt"))
	}
	if _, err := os.Lstat(filepath.Join(dir, "state")); err == nil {
		t.Errorf("the refused plinth created its root")
	}

	plain := filepath.Join(dir, "plain")
	os.Mkdir(plain, 0o700)
	out = runRefused(t, childArgs(filepath.Join(dir, "state"), sock, "--pool", "name=fast,backend=file,dir="+plain+",mountpoint=true"), answers(sock))
	if want := "pool fast: directory " + plain + " is not a mount point"; !strings.Contains(out, want) {
		t.Errorf("mountpoint=true on a plain directory: want %q in:\n%s", want, out)
	}
	if ents, _ := os.ReadDir(plain); len(ents) != 0 {
		t.Errorf("plinth wrote into %s: %v", plain, ents)
	}

	if err := unix.Mount(plain, plain, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(plain, unix.MNT_DETACH) })
	out = runRefused(t, childArgs(filepath.Join(dir, "state"), sock, "--pool", "name=fast,backend=file,dir="+plain+",mountpoint=true"), answers(sock))
	if !strings.Contains(out, "is not a mount point") {
		t.Errorf("mountpoint=true on a bind mount of a plain directory: accepted, or another reason:\n%s", out)
	}

	mnt := testenv.Filesystem(t, "xfs", 512<<20)
	startServing(t, childArgs(filepath.Join(dir, "state"), sock, "--pool", "name=fast,backend=file,dir="+mnt+",mountpoint=true"), sock)
	if _, err := createVol(t, testenv.Dial(t, sock), "v1", 64<<20); err != nil {
		t.Errorf("create on a mountpoint=true pool: %v", err)
	}
}
