package disk_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/test/testenv"
)

// crashAt fails the first run of one program, as a crash there would leave
// things (the program did not run).
type crashAt struct {
	mount.Runner
	program string
	done    bool
}

func (c *crashAt) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if name == c.program && !c.done {
		c.done = true
		return nil, errors.New("crash before " + name)
	}
	return c.Runner.Run(ctx, name, args...)
}

// A crash between recording a pool's disks and formatting them leaves a
// record that names them; the next start formats them and mounts the pool.
func TestClaimSurvivesACrashBeforeFormatting(t *testing.T) {
	testenv.RequireHost(t, "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "d.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 400<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	mnt := filepath.Join(dir, "state", "mnt")
	t.Cleanup(func() {
		_ = unix.Unmount(filepath.Join(mnt, "fast"), 0)
		_ = exec.Command("losetup", "-d", dev).Run()
	})
	cfg, err := disk.ParseConfig([]byte(`rules: [{pool: fast, layout: file, select: {transports: [loop], ids: ["file:` + img + `"]}}]`))
	if err != nil {
		t.Fatal(err)
	}
	host := disk.Host{Sysfs: "/sys", Dev: "/dev", Proc: "/proc"}
	probe := disk.Wipefs{Run: mount.Exec{}}
	records := disk.Records{Dir: filepath.Join(dir, "state", "claims")}
	start := func(run mount.Runner) []disk.Ready {
		t.Helper()
		disks, err := disk.Scan(context.Background(), host, probe)
		if err != nil {
			t.Fatal(err)
		}
		claims, err := records.Load()
		if err != nil {
			t.Fatal(err)
		}
		c := disk.Claimer{Records: records, MountDir: mnt, Run: run, Probe: probe}
		return c.Apply(context.Background(), disk.MakePlan(cfg, disks, claims))
	}
	ready := start(&crashAt{Runner: mount.Exec{}, program: "mkfs.xfs"})
	if len(ready) != 1 || ready[0].Err == nil {
		t.Fatalf("first start: %+v, want the pool failed", ready)
	}
	claims, _ := records.Load()
	if len(claims) != 1 || claims[0].State != disk.ClaimFormatting || claims[0].Disks[0].ID != "file:"+img {
		t.Fatalf("records after the crash: %+v", claims)
	}
	ready = start(mount.Exec{})
	if len(ready) != 1 || ready[0].Err != nil || ready[0].Dir != filepath.Join(mnt, "fast") {
		t.Fatalf("second start: %+v", ready)
	}
	claims, _ = records.Load()
	if claims[0].State != disk.ClaimReady || claims[0].UUID == "" {
		t.Errorf("record after the second start: %+v", claims[0])
	}
	sig, err := probe.Probe(context.Background(), dev)
	if err != nil || sig.Type != "xfs" || sig.UUID != claims[0].UUID {
		t.Errorf("the disk holds %+v (%v), want the recorded xfs", sig, err)
	}
	// A third start finds it mounted already and changes nothing.
	if ready = start(mount.Exec{}); ready[0].Err != nil {
		t.Errorf("third start: %v", ready[0].Err)
	}
}
