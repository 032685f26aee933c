package disk_test

import (
	"context"
	"errors"
	"fmt"
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

// crashAt stops the start at the first run of one program, as a crash
// there would leave things (the program did not run, and nothing after it
// did): it panics, and the test recovers.
type crashAt struct {
	mount.Runner
	program string
	done    bool
}

type crash struct{ program string }

func (c *crashAt) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if name == c.program && !c.done {
		c.done = true
		panic(crash{name})
	}
	return c.Runner.Run(ctx, name, args...)
}

// failAt makes the first run of one program fail: before it runs (after:
// false), or after it ran (what it began stays on the disk).
type failAt struct {
	mount.Runner
	program string
	after   bool
	done    bool
}

func (f *failAt) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if name == f.program && !f.done {
		f.done = true
		if f.after {
			_, _ = f.Runner.Run(ctx, name, args...)
		}
		return nil, errors.New(name + " failed")
	}
	return f.Runner.Run(ctx, name, args...)
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
	func() {
		defer func() {
			if r := recover(); r != (crash{"mkfs.xfs"}) {
				t.Fatalf("first start: %v, want a crash before mkfs.xfs", r)
			}
		}()
		start(&crashAt{Runner: mount.Exec{}, program: "mkfs.xfs"})
	}()
	claims, _ := records.Load()
	if len(claims) != 1 || claims[0].State != disk.ClaimFormatting || claims[0].Disks[0].ID != "file:"+img {
		t.Fatalf("records after the crash: %+v", claims)
	}
	ready := start(mount.Exec{})
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

// filePool makes a file pool "p" on a new loop disk with a Claimer, as a
// start does, and returns a start that plans from the records and applies
// again, and the pool's mount directory (unmounted at the test's end).
func filePool(t *testing.T) (start func() []disk.Ready, dev, mnt string) {
	t.Helper()
	testenv.RequireHost(t, "mkfs.xfs")
	dev, img := loopDisk(t, 320<<20)
	dir := t.TempDir()
	mnt = filepath.Join(dir, "mnt", "p")
	t.Cleanup(func() {
		for unix.Unmount(mnt, 0) == nil {
		}
	})
	cfg, err := disk.ParseConfig([]byte(`rules: [{pool: p, layout: file, select: {transports: [loop], ids: ["file:` + img + `"]}}]`))
	if err != nil {
		t.Fatal(err)
	}
	probe := disk.Wipefs{Run: mount.Exec{}}
	records := disk.Records{Dir: filepath.Join(dir, "claims")}
	start = func() []disk.Ready {
		t.Helper()
		claims, err := records.Load()
		if err != nil {
			t.Fatal(err)
		}
		c := disk.Claimer{Records: records, MountDir: filepath.Dir(mnt), Run: mount.Exec{}, Probe: probe}
		return c.Apply(context.Background(), disk.MakePlan(cfg, []disk.Disk{scanOne(t, img)}, claims))
	}
	if ready := start(); len(ready) != 1 || ready[0].Err != nil || ready[0].Dir != mnt {
		t.Fatalf("first start: %+v", ready)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	return start, dev, mnt
}

// mounted reports whether dir is a mount point.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// Trial finding 6a: a symlink at the pool's mount directory. The pool
// filesystem was mounted over the symlink's target (any directory).
func TestPoolMountDirSymlinkIsRefused(t *testing.T) {
	start, _, mnt := filePool(t)
	victim := t.TempDir()
	if err := os.Remove(mnt); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for unix.Unmount(victim, 0) == nil {
		}
	})
	ready := start()
	if len(ready) != 1 || ready[0].Err == nil || !strings.Contains(ready[0].Err.Error(), "symlink") {
		t.Errorf("start: %+v, want the pool failed, the symlink named", ready)
	}
	if mounted(t, victim) {
		t.Errorf("the pool was mounted at the symlink's target %s", victim)
	}
}

// Trial finding 6b: a bind mount of a subdirectory of the pool's own
// filesystem at the mount directory: the same device, but not the pool's
// root. The pool loaded with no volumes.
func TestPoolMountDirBindOfSubdirectoryIsRefused(t *testing.T) {
	start, dev, mnt := filePool(t)
	tmp := t.TempDir()
	run(t, "mount", dev, tmp)
	if err := os.Mkdir(filepath.Join(tmp, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "--bind", filepath.Join(tmp, "sub"), mnt)
	run(t, "umount", tmp)
	ready := start()
	if len(ready) != 1 || ready[0].Err == nil || !strings.Contains(ready[0].Err.Error(), "/sub") {
		t.Fatalf("start: %+v, want the pool failed, naming the subdirectory /sub mounted there", ready)
	}
	t.Log(ready[0].Err)
	// The pool's own mount (plinth restarted, the node did not) is taken.
	run(t, "umount", mnt)
	run(t, "mount", dev, mnt)
	if ready := start(); ready[0].Err != nil {
		t.Errorf("with the pool's filesystem mounted at its root: %v", ready[0].Err)
	}
}

// Another mount over the pool's own: what is seen there is judged.
func TestPoolMountDirOvermountedIsRefused(t *testing.T) {
	start, dev, mnt := filePool(t)
	run(t, "mount", dev, mnt)
	run(t, "mount", "-t", "tmpfs", "over", mnt)
	ready := start()
	if len(ready) != 1 || ready[0].Err == nil || !strings.Contains(ready[0].Err.Error(), "tmpfs") {
		t.Errorf("start: %+v, want the pool failed, naming the tmpfs on top", ready)
	}
}

// claimStart is a start over one loop disk with one rule: it plans from
// the records and applies with run.
func claimStart(t *testing.T, img, rules string) (start func(run mount.Runner, between ...func()) (disk.Plan, []disk.Ready), records disk.Records) {
	t.Helper()
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	t.Cleanup(func() {
		entries, _ := os.ReadDir(mnt)
		for _, e := range entries {
			_ = unix.Unmount(filepath.Join(mnt, e.Name()), 0)
		}
	})
	cfg, err := disk.ParseConfig([]byte(rules))
	if err != nil {
		t.Fatal(err)
	}
	records = disk.Records{Dir: filepath.Join(dir, "claims")}
	start = func(run mount.Runner, between ...func()) (disk.Plan, []disk.Ready) {
		t.Helper()
		claims, err := records.Load()
		if err != nil {
			t.Fatal(err)
		}
		plan := disk.MakePlan(cfg, []disk.Disk{scanOne(t, img)}, claims)
		for _, f := range between {
			f() // after the plan, before it is carried out
		}
		c := disk.Claimer{Records: records, MountDir: mnt, Run: run, Probe: disk.Wipefs{Run: mount.Exec{}}}
		return plan, c.Apply(context.Background(), plan)
	}
	return start, records
}

// Trial finding 12: a file rule selecting a disk under mkfs.xfs's minimum.
// The plan said claim, mkfs.xfs failed with its usage text, and the record
// stayed formatting for ever. Now the disk is passed over with the reason,
// nothing is recorded and nothing runs on it.
func TestFileRuleOnADiskTooSmallForXFS(t *testing.T) {
	dev, img := loopDisk(t, 200<<20)
	start, records := claimStart(t, img, `rules: [{pool: fp, layout: file, select: {transports: [loop], ids: ["file:`+img+`"]}}]`)
	rec := &recorder{}
	plan, ready := start(rec)
	if dec := plan.Decisions[0]; dec.Action != disk.ActionSkip || !strings.Contains(dec.Why, "pool fp: too small for an xfs file pool (200MiB, at least 300MiB)") {
		t.Errorf("decision %s (%s), want skip, too small", dec.Action, dec.Why)
	}
	if len(ready) != 0 {
		t.Errorf("pools %+v, want none", ready)
	}
	if claims, err := records.Load(); len(claims) != 0 || err != nil {
		t.Errorf("records %+v, %v; want none", claims, err)
	}
	if touched := rec.touched(dev); len(touched) > 0 {
		t.Errorf("programs ran on the disk: %q", touched)
	}
}

// What the trial's start left (a record in state formatting on a disk too
// small) is dropped at the next start, and the disk is not the pool's.
func TestFormattingRecordOnADiskTooSmallIsDropped(t *testing.T) {
	dev, img := loopDisk(t, 200<<20)
	start, records := claimStart(t, img, `rules: [{pool: fp, layout: file, select: {transports: [loop], ids: ["file:`+img+`"]}}]`)
	d := scanOne(t, img)
	if err := records.Put(disk.Claim{Pool: "fp", Layout: disk.LayoutFile, State: disk.ClaimFormatting,
		Disks: []disk.Member{{ID: d.ID, Name: d.Name, SizeBytes: d.SizeBytes}}}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	_, ready := start(rec)
	if len(ready) != 1 || ready[0].Err == nil || !strings.Contains(ready[0].Err.Error(), "too small") || !strings.Contains(ready[0].Err.Error(), "dropped") {
		t.Errorf("start: %+v, want the pool failed, too small, the claim dropped", ready)
	}
	if claims, err := records.Load(); len(claims) != 0 || err != nil {
		t.Errorf("records %+v, %v; want the claim dropped", claims, err)
	}
	if touched := rec.touched(dev); len(touched) > 0 {
		t.Errorf("programs ran on the disk: %q", touched)
	}
	if plan, _ := start(rec); plan.Decisions[0].Action != disk.ActionSkip || !strings.Contains(plan.Decisions[0].Why, "too small") {
		t.Errorf("next start: %+v, want the disk skipped, too small", plan.Decisions[0])
	}
}

// A first format that fails does not leave the disk claimed for ever: the
// record is dropped when the disk holds nothing, or only what plinth's mkfs
// began (erased); the next start claims it again.
func TestFailedFirstFormatDropsTheClaim(t *testing.T) {
	testenv.RequireHost(t, "mkfs.xfs")
	for name, after := range map[string]bool{"mkfs wrote nothing": false, "mkfs began": true} {
		t.Run(name, func(t *testing.T) {
			_, img := loopDisk(t, 320<<20)
			start, records := claimStart(t, img, `rules: [{pool: fp, layout: file, select: {transports: [loop], ids: ["file:`+img+`"]}}]`)
			_, ready := start(&failAt{Runner: mount.Exec{}, program: "mkfs.xfs", after: after})
			if len(ready) != 1 || ready[0].Err == nil || !strings.Contains(ready[0].Err.Error(), "dropped") {
				t.Fatalf("first start: %+v, want the pool failed, the claim dropped", ready)
			}
			if claims, err := records.Load(); len(claims) != 0 || err != nil {
				t.Errorf("records %+v, %v; want the claim dropped", claims, err)
			}
			if d := scanOne(t, img); d.State != disk.StateFree {
				t.Errorf("disk: %s (%v), want free again", d.State, d.Reasons)
			}
			if _, ready := start(mount.Exec{}); len(ready) != 1 || ready[0].Err != nil {
				t.Errorf("next start: %+v", ready)
			}
		})
	}
}

// gptDisk is a loop disk with a GPT and one partition on it (not in use).
func gptDisk(t *testing.T) (dev, img string) {
	t.Helper()
	testenv.RequireHost(t, "sfdisk")
	dev, img = loopDisk(t, 64<<20)
	cmd := exec.Command("sfdisk", "-q", dev)
	cmd.Stdin = strings.NewReader("label: gpt\n,16M\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	return dev, img
}

const wipeDiskRule = `rules: [{pool: pw, layout: disk, wipe: true, select: {transports: [loop], ids: ["file:%s"]}}]`

// Trial finding 5: wipe: true on a layout: disk rule. The plan said wipe,
// the start recorded the disk and never wiped it: never free, nothing
// logged. It is wiped (after the record names it), and free afterwards.
func TestWipeRuleOnDiskLayoutWipes(t *testing.T) {
	dev, img := gptDisk(t)
	start, records := claimStart(t, img, fmt.Sprintf(wipeDiskRule, img))
	rec := &recorder{}
	plan, ready := start(rec)
	if dec := plan.Decisions[0]; dec.Action != disk.ActionWipe {
		t.Fatalf("decision %s (%s), want wipe", dec.Action, dec.Why)
	}
	if len(ready) != 1 || ready[0].Err != nil || len(ready[0].Members) != 1 {
		t.Fatalf("start: %+v", ready)
	}
	if touched := rec.touched(dev); len(touched) != 1 || touched[0] != "wipefs --all --quiet "+dev {
		t.Errorf("ran on the disk: %q, want one wipefs --all", touched)
	}
	if d := scanOne(t, img); !d.Signature.Empty() || len(d.Partitions) > 0 {
		t.Errorf("disk after the start: %v, want it empty", d.Reasons)
	}
	claims, _ := records.Load()
	if len(claims) != 1 || len(claims[0].Disks) != 1 || claims[0].Disks[0].ID != "file:"+img || claims[0].Disks[0].Wipe {
		t.Errorf("record %+v, want the disk, its wipe done", claims)
	}
	// The next start uses it; nothing more is wiped.
	rec = &recorder{}
	if plan, _ := start(rec); plan.Decisions[0].Action != disk.ActionUse || len(rec.touched(dev)) > 0 {
		t.Errorf("next start: %s, ran %q; want use, nothing run", plan.Decisions[0].Action, rec.touched(dev))
	}
}

// A crash between recording the disk and wiping it: the record says the
// wipe is owed, and the next start does it.
func TestWipeOwedAfterACrashIsDone(t *testing.T) {
	dev, img := gptDisk(t)
	start, records := claimStart(t, img, fmt.Sprintf(wipeDiskRule, img))
	func() {
		defer func() {
			if r := recover(); r != (crash{"wipefs"}) {
				t.Fatalf("first start: %v, want a crash before wipefs", r)
			}
		}()
		start(&crashAt{Runner: mount.Exec{}, program: "wipefs"})
	}()
	claims, _ := records.Load()
	if len(claims) != 1 || len(claims[0].Disks) != 1 || !claims[0].Disks[0].Wipe {
		t.Fatalf("record after the crash %+v, want the disk with its wipe owed", claims)
	}
	rec := &recorder{}
	plan, ready := start(rec)
	if dec := plan.Decisions[0]; dec.Action != disk.ActionWipe || len(ready) != 1 || ready[0].Err != nil {
		t.Fatalf("second start: %s (%s), %+v", dec.Action, dec.Why, ready)
	}
	if touched := rec.touched(dev); len(touched) != 1 {
		t.Errorf("ran on the disk: %q, want one wipefs --all", touched)
	}
	if d := scanOne(t, img); !d.Signature.Empty() {
		t.Errorf("disk after the second start: %v, want it empty", d.Reasons)
	}
	if claims, _ := records.Load(); claims[0].Disks[0].Wipe {
		t.Errorf("record %+v, want the wipe done", claims[0])
	}
}

// A disk held open when the wipe would run is not wiped (wipefs is not
// run); the pool serves, the wipe stays owed.
func TestWipeOfAHeldDiskWaits(t *testing.T) {
	dev, img := gptDisk(t)
	start, records := claimStart(t, img, fmt.Sprintf(wipeDiskRule, img))
	rec := &recorder{}
	plan, ready := start(rec, func() {
		fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
	})
	if plan.Decisions[0].Action != disk.ActionWipe || len(ready) != 1 || ready[0].Err != nil {
		t.Fatalf("start: %s, %+v", plan.Decisions[0].Action, ready)
	}
	if touched := rec.touched(dev); len(touched) > 0 {
		t.Errorf("ran on the held disk: %q", touched)
	}
	if claims, _ := records.Load(); len(claims) != 1 || !claims[0].Disks[0].Wipe {
		t.Errorf("record %+v, want the wipe owed", claims)
	}
}

// A re-trial finding: a wipe owed by a start that stopped goes on only for
// what the rule's wipe was decided on. A filesystem someone made on the
// disk between the two starts is not erased, with the rule kept or taken
// out.
func TestOwedWipeErasesOnlyWhatWasDecided(t *testing.T) {
	for _, keepRule := range []bool{true, false} {
		t.Run(fmt.Sprintf("rule kept %v", keepRule), func(t *testing.T) {
			dev, img := gptDisk(t)
			start, records := claimStart(t, img, fmt.Sprintf(wipeDiskRule, img))
			func() {
				defer func() { _ = recover() }()
				start(&crashAt{Runner: mount.Exec{}, program: "wipefs"})
			}()
			if claims, _ := records.Load(); len(claims) != 1 || !claims[0].Disks[0].Wipe {
				t.Fatalf("record after the crash %+v, want the wipe owed", claims)
			}
			run(t, "mkfs.ext4", "-q", "-F", "-L", "theirs", dev)
			rules := fmt.Sprintf(wipeDiskRule, img)
			if !keepRule {
				rules = `rules: []`
			}
			cfg, err := disk.ParseConfig([]byte(rules))
			if err != nil {
				t.Fatal(err)
			}
			claims, _ := records.Load()
			plan := disk.MakePlan(cfg, []disk.Disk{scanOne(t, img)}, claims)
			rec := &recorder{}
			c := disk.Claimer{Records: records, MountDir: t.TempDir(), Run: rec, Probe: disk.Wipefs{Run: mount.Exec{}}}
			c.Apply(context.Background(), plan)
			if touched := rec.touched(dev); len(touched) != 0 {
				t.Errorf("ran on the disk: %q", touched)
			}
			if d := scanOne(t, img); d.Signature.Type != "ext4" {
				t.Errorf("the disk holds %v, want the ext4 made since", d.Signature)
			}
		})
	}
}
