// Package e2e is plinth's end-to-end suite: a real single-node cluster on
// loopback (test/e2e/cluster), plinth installed from deploy/overlays/e2e
// (the base users install, with loopback wiring), and the scenarios of the
// in-cluster issue against it. Run with `make e2e` (root; it builds and
// caches the Kubernetes binaries first).
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	images "github.com/plinth-dev/plinth/hack/image/oci"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/test/e2e/cluster"
)

const (
	nodeName = "plinth-e2e"
	hostRoot = "/var/lib/plinth-e2e" // deploy/overlays/e2e names it
	driver   = "plinth.example.com"
)

// env is the running cluster with plinth installed, shared by the tests.
type env struct {
	c      *cluster.Cluster
	client kubernetes.Interface
	plinth versioned.Interface // PlinthVolumes and PlinthNodes
	cfg    *rest.Config
	repo   string
	// keepLogDirs: /var/log/pods and /var/log/containers were there before.
	keepLogDirs bool
	// keepKubeletDir: /var/lib/kubelet was there before.
	keepKubeletDir bool
	kubectlPlinth  string // the kubectl plugin, built for the tests
	plinthBin      string // the plinth binary the images hold
	// disks are the loop "disks" of the disk rules: name -> image file.
	disks map[string]string
}

var e *env

func TestMain(m *testing.M) {
	code := func() int {
		bin := os.Getenv("PLINTH_CLUSTER_BIN")
		switch {
		case bin == "":
			fmt.Println("e2e: PLINTH_CLUSTER_BIN is not set (make e2e builds the cluster and sets it); skipping")
			return m.Run()
		case os.Geteuid() != 0:
			fmt.Println("e2e: needs root (mounts, loop devices, the kubelet); skipping")
			return m.Run()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
		defer cancel()
		var err error
		e, err = setUp(ctx, bin)
		defer e.tearDown()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e setup:", err)
			if e != nil && e.c != nil {
				for _, n := range []string{"kubelet", "containerd"} {
					fmt.Fprintf(os.Stderr, "--- %s log tail\n%s\n", n, e.c.Logs(n, 40))
				}
			}
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func logf(format string, args ...any) {
	fmt.Printf("e2e %s: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func setUp(ctx context.Context, bin string) (*env, error) {
	start := time.Now()
	repo, err := filepath.Abs("../..")
	if err != nil {
		return nil, err
	}
	e := &env{repo: repo}
	if _, err := os.Stat("/var/log/pods"); err == nil {
		e.keepLogDirs = true
	}
	if _, err := os.Stat(cluster.KubeletDir); err == nil {
		e.keepKubeletDir = true
	}
	cluster.ReapLeftovers()
	cleanHost()
	dir, err := os.MkdirTemp("", "plinth-e2e-")
	if err != nil {
		return nil, err
	}
	if err := e.prepareHost(ctx, dir); err != nil {
		return e, err
	}
	tars, err := e.buildImages(ctx, dir)
	if err != nil {
		return e, err
	}
	logf("images built (%s)", time.Since(start).Round(time.Millisecond))
	e.c, err = cluster.Start(ctx, cluster.Options{
		Bin: bin, Dir: dir, NodeName: nodeName, RuncWrapper: filepath.Join(repo, "test/e2e/runc-wrapper.sh"),
		CDIDir: filepath.Join(hostRoot, "cdi"), // plinth node's --cdi-dir in deploy/overlays/e2e and the chart's e2e values
		Log:    func(f string, a ...any) { logf(f, a...) },
	})
	if err != nil {
		return e, err
	}
	e.client, e.cfg = e.c.Client, e.c.Config
	if e.plinth, err = versioned.NewForConfig(e.cfg); err != nil {
		return e, err
	}
	logf("cluster up (%s)", time.Since(start).Round(time.Millisecond))
	// VolumeSnapshots work in the cluster as in one with the snapshot
	// add-on: its CRDs, then the controller (it exits when they are missing).
	crds, err := e.c.SnapshotCRDs()
	if err != nil {
		return e, err
	}
	if err := apply(ctx, e.cfg, crds); err != nil {
		return e, fmt.Errorf("snapshot CRDs: %w", err)
	}
	if err := e.c.StartSnapshotController(); err != nil {
		return e, err
	}
	for _, t := range tars {
		if err := e.c.ImportImage(ctx, t); err != nil {
			return e, err
		}
	}
	// Workers (TestZNodes) get plinth's, the test app's and the pause image.
	e.c.SetWorkerImages(tars[:3])
	manifests, err := render(filepath.Join(repo, "deploy/overlays/e2e"))
	if err != nil {
		return e, fmt.Errorf("render deploy/overlays/e2e: %w", err)
	}
	if err := apply(ctx, e.cfg, manifests); err != nil {
		return e, err
	}
	if err := e.waitPlinth(ctx); err != nil {
		return e, err
	}
	logf("plinth installed and registered (%s since start)", time.Since(start).Round(time.Millisecond))
	return e, nil
}

// prepareHost makes the pools' filesystems (loop devices) and the device
// fixture tree with real character devices, under hostRoot.
func (e *env) prepareHost(ctx context.Context, dir string) error {
	// plinth node mounts these with Bidirectional propagation, which needs
	// shared mounts on the host (systemd makes / shared; this VM's init
	// does not): bind each onto itself and make it shared.
	for _, d := range []string{hostRoot, "/var/lib/plinth"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(d, d, "", syscall.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d, err)
		}
		if err := syscall.Mount("", d, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("make %s shared: %w", d, err)
		}
	}
	pools := []struct {
		name, fs string
		size     int64
	}{{"local", "xfs", 6 << 30}, {"small", "ext4", 400 << 20}, {"btr", "btrfs", 6 << 30}, {"ext", "ext4", 3 << 30}}
	for _, p := range pools {
		img := filepath.Join(dir, p.name+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			return err
		}
		if err := os.Truncate(img, p.size); err != nil {
			return err
		}
		dev, err := run(ctx, "losetup", "-f", "--show", img)
		if err != nil {
			return err
		}
		mkfs := []string{"-q"}
		if p.fs == "btrfs" {
			mkfs = []string{"-q", "-f"}
		}
		if _, err := run(ctx, "mkfs."+p.fs, append(mkfs, dev)...); err != nil {
			return err
		}
		mnt := filepath.Join(hostRoot, "pools", p.name)
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(dev, mnt, p.fs, 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", mnt, err)
		}
	}
	if err := e.prepareDisks(ctx, dir); err != nil {
		return err
	}
	// Devices: the nvidia-8gpu fixture, its device files made real
	// character devices (1:3, like /dev/null) so the runtime can create them
	// in containers.
	fx := filepath.Join(e.repo, "testdata/devices/nvidia-8gpu")
	devRoot := filepath.Join(hostRoot, "devices")
	if _, err := run(ctx, "cp", "-a", fx+"/.", devRoot); err != nil {
		return err
	}
	if err := filepath.Walk(filepath.Join(devRoot, "dev"), func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		return syscall.Mknod(p, syscall.S_IFCHR|0o666, 1<<8|3)
	}); err != nil {
		return err
	}
	return os.MkdirAll(filepath.Join(hostRoot, "cdi"), 0o755)
}

// diskImages are the loop devices that stand in for the node's disks, and
// the disk rules (hostRoot/disks.yaml, which deploy/overlays/e2e names)
// that make a file pool of one, a btrfs raid1 pool of two and a disk pool
// of two; a disk with someone else's filesystem is named by no rule.
var diskImages = []struct {
	name string
	size int64
}{{"dfast", 512 << 20}, {"dm1", 320 << 20}, {"dm2", 320 << 20}, {"dw1", 64 << 20}, {"dw2", 96 << 20}, {"dforeign", 64 << 20}}

func (e *env) prepareDisks(ctx context.Context, dir string) error {
	e.disks = map[string]string{}
	for _, d := range diskImages {
		img := filepath.Join(dir, d.name+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			return err
		}
		if err := os.Truncate(img, d.size); err != nil {
			return err
		}
		if d.name == "dforeign" {
			if _, err := run(ctx, "mkfs.ext4", "-q", "-F", "-L", "theirs", img); err != nil {
				return err
			}
		}
		if _, err := run(ctx, "losetup", "-f", img); err != nil {
			return err
		}
		e.disks[d.name] = img
	}
	id := func(names ...string) string {
		var q []string
		for _, n := range names {
			q = append(q, fmt.Sprintf("%q", "file:"+e.disks[n]))
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	rules := fmt.Sprintf(`scanInterval: 1s
rules:
- {pool: dfast, layout: file, fsType: xfs, select: {transports: [loop], ids: %s}}
- {pool: dmirror, layout: btrfs, raid: raid1, select: {transports: [loop], ids: %s}}
- {pool: dwhole, layout: disk, fsType: ext4, select: {transports: [loop], ids: %s}}
`, id("dfast"), id("dm1", "dm2"), id("dw1", "dw2"))
	return os.WriteFile(filepath.Join(hostRoot, "disks.yaml"), []byte(rules), 0o644)
}

// cleanHost removes what this or an earlier run left: mounts under hostRoot
// and /var/lib/plinth, the loop devices of volumes (their backing files live
// on the pools' filesystems) and of the pools, the run directories.
func cleanHost() {
	out, _ := exec.Command("findmnt", "-rn", "-o", "TARGET").Output()
	var points []string
	for _, l := range strings.Split(string(out), "\n") {
		if l == hostRoot || strings.HasPrefix(l, hostRoot+"/") || l == "/var/lib/plinth" || strings.HasPrefix(l, "/var/lib/plinth/") {
			points = append(points, l)
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
	out, _ = exec.Command("losetup", "-n", "-l", "-O", "NAME,MAJ:MIN,BACK-MAJ:MIN,BACK-FILE").Output()
	type loop struct{ name, dev, backDev, file string }
	var loops []loop
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 4 {
			loops = append(loops, loop{f[0], f[1], f[2], strings.Join(f[3:], " ")})
		}
	}
	pools := map[string]bool{}
	for _, l := range loops {
		if strings.Contains(l.file, "/plinth-e2e-") {
			pools[l.dev] = true
		}
	}
	for _, l := range loops { // volumes first: they hold the pools busy
		if pools[l.backDev] {
			_ = exec.Command("losetup", "-d", l.name).Run()
		}
	}
	for _, l := range loops {
		if pools[l.dev] {
			_ = exec.Command("losetup", "-d", l.name).Run()
		}
	}
	_ = os.RemoveAll(hostRoot)
	_ = os.RemoveAll("/var/lib/plinth")
	// plinth's registration sockets a killed plinth node left: the next
	// kubelet would try them, fail, and back off from that path for up to
	// a minute, delaying the real registration made there later.
	socks, _ := filepath.Glob("/var/lib/kubelet/plugins_registry/plinth.example.com*-reg.sock")
	for _, s := range socks {
		_ = os.Remove(s)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "plinth-e2e-[0-9]*"))
	for _, d := range dirs {
		_ = os.RemoveAll(d)
	}
}

func (e *env) buildImages(ctx context.Context, dir string) ([]string, error) {
	plinthBin := filepath.Join(dir, "plinth")
	appBin := filepath.Join(dir, "e2e-app")
	build := func(out, pkg, wd string) error {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-X main.version=e2e", "-o", out, pkg)
		cmd.Dir = wd
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w: %s", pkg, err, out)
		}
		return nil
	}
	if err := build(plinthBin, "./cmd/plinth", e.repo); err != nil {
		return nil, err
	}
	e.plinthBin = plinthBin
	if err := build(appBin, "./app", filepath.Join(e.repo, "test/e2e")); err != nil {
		return nil, err
	}
	e.kubectlPlinth = filepath.Join(dir, "kubectl-plinth")
	if err := build(e.kubectlPlinth, "./cmd/kubectl-plinth", e.repo); err != nil {
		return nil, err
	}
	af, err := images.Binary(appBin, "/e2e-app")
	if err != nil {
		return nil, err
	}
	// plinth's image is make image's (PLINTH_IMAGE_TAR, tagged
	// plinth.example.com/plinth:dev as the manifests name it); run alone,
	// the suite assembles the same with hack/image/oci.
	var tars []string
	var specs []images.Spec
	if tar := os.Getenv("PLINTH_IMAGE_TAR"); tar != "" {
		tars = append(tars, tar)
	} else {
		tools, err := images.HostTools(images.NodeTools)
		if err != nil {
			return nil, err
		}
		pf, err := images.Binary(plinthBin, "/usr/bin/plinth")
		if err != nil {
			return nil, err
		}
		labels := map[string]string{"org.opencontainers.image.title": "plinth", "org.opencontainers.image.source": "https://github.com/plinth-dev/plinth"}
		specs = append(specs, images.Spec{Ref: "plinth.example.com/plinth:dev", Entrypoint: []string{"/usr/bin/plinth"}, Files: append(tools, pf), Labels: labels})
	}
	specs = append(specs,
		images.Spec{Ref: "plinth.example.com/e2e-app:dev", Entrypoint: []string{"/e2e-app"}, Files: []images.File{af}},
		images.Spec{Ref: "registry.k8s.io/pause:3.10", Entrypoint: []string{"/e2e-app", "pause"}, Files: []images.File{af}},
	)
	if bin := conformanceBin(); bin != "" {
		more, err := conformanceImages(bin, appBin)
		if err != nil {
			return nil, err
		}
		specs = append(specs, more...)
	}
	for i, s := range specs {
		p := filepath.Join(dir, fmt.Sprintf("image-%d.tar", i))
		if err := images.Write(s, p); err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Ref, err)
		}
		tars = append(tars, p)
	}
	return tars, nil
}

func (e *env) tearDown() {
	if e == nil {
		return
	}
	if e.c != nil {
		// Keep the pods' logs (plinth's among them) for a failed run; the
		// kubelet's own are in the cluster directory.
		art := os.Getenv("PLINTH_E2E_ARTIFACTS")
		if art == "" {
			art = filepath.Join(os.TempDir(), "plinth-e2e-artifacts")
		}
		_ = os.RemoveAll(art)
		_ = os.MkdirAll(art, 0o755)
		_, _ = run(context.Background(), "cp", "-rL", "/var/log/pods", filepath.Join(art, "pods"))
		_, _ = run(context.Background(), "cp", "-r", filepath.Join(e.c.Dir, "logs"), filepath.Join(art, "cluster"))
		for _, w := range e.c.Workers() { // their pods' logs and their kubelet's and containerd's
			_ = os.MkdirAll(filepath.Join(art, "nodes", w.Name), 0o755)
			_, _ = run(context.Background(), "cp", "-rL", filepath.Join(w.Dir, "pods-log"), filepath.Join(art, "nodes", w.Name, "pods"))
			_, _ = run(context.Background(), "cp", "-r", filepath.Join(w.Dir, "logs"), filepath.Join(art, "nodes", w.Name, "logs"))
		}
		e.c.Stop()
		// What the kubelet left on the host: pod logs, its containers' logs.
		if !e.keepLogDirs {
			_ = os.RemoveAll("/var/log/pods")
			_ = os.RemoveAll("/var/log/containers")
		}
		if !e.keepKubeletDir {
			_ = os.RemoveAll(cluster.KubeletDir)
		}
		logf("logs kept in %s", art)
	}
	cleanHost()
}
