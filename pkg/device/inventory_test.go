package device

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func copyFixture(t *testing.T, name string) Host {
	t.Helper()
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(filepath.Join(fixtures, name))); err != nil {
		t.Fatal(err)
	}
	return Host{Sysfs: filepath.Join(dst, "sys"), Dev: filepath.Join(dst, "dev"), Proc: filepath.Join(dst, "proc")}
}

func healthOf(inv *Inventory, r Resource) map[string]bool {
	out := map[string]bool{}
	for _, u := range inv.Units(r) {
		out[u.ID] = u.Healthy
	}
	return out
}

func TestHealthHysteresisAndRemoval(t *testing.T) {
	host := copyFixture(t, "nvidia-8gpu")
	cfg := DefaultConfig()
	cfg.Resources[0].Sharing.Replicas = 2
	cfg.Defaults()
	clock := time.Unix(1000, 0)
	inv := NewInventory(host, cfg)
	inv.now = func() time.Time { return clock }
	res := cfg.Resources[0]
	if changed, _, err := inv.Scan(); err != nil || !changed {
		t.Fatalf("first scan: %v %v", changed, err)
	}
	if h := healthOf(inv, res); len(h) != 16 || !h["0000:18:00.0::0"] {
		t.Fatalf("after first scan: %v", h)
	}
	wait := inv.Changed()

	// GPU 0's node disappears: unhealthy at once, both replicas.
	os.Remove(filepath.Join(host.Dev, "nvidia0"))
	if changed, _, _ := inv.Scan(); !changed {
		t.Fatal("losing a node is not a change")
	}
	select {
	case <-wait:
	default:
		t.Fatal("Changed() not signalled")
	}
	if h := healthOf(inv, res); h["0000:18:00.0::0"] || h["0000:18:00.0::1"] || !h["0000:1a:00.0::0"] {
		t.Fatalf("after losing nvidia0: %v", h)
	}
	// It comes back: still unhealthy until RecoverAfter has passed...
	os.WriteFile(filepath.Join(host.Dev, "nvidia0"), nil, 0o644)
	changed, recheck, _ := inv.Scan()
	if changed || recheck != cfg.Health.RecoverAfter.Duration {
		t.Fatalf("node back: changed=%v recheck=%v", changed, recheck)
	}
	// ...and a flap in between restarts the wait.
	clock = clock.Add(cfg.Health.RecoverAfter.Duration / 2)
	os.Remove(filepath.Join(host.Dev, "nvidia0"))
	inv.Scan()
	os.WriteFile(filepath.Join(host.Dev, "nvidia0"), nil, 0o644)
	inv.Scan()
	clock = clock.Add(cfg.Health.RecoverAfter.Duration - time.Second)
	if changed, _, _ := inv.Scan(); changed {
		t.Fatal("recovered before RecoverAfter of steady health")
	}
	clock = clock.Add(time.Second)
	if changed, _, _ := inv.Scan(); !changed || !healthOf(inv, res)["0000:18:00.0::1"] {
		t.Fatal("not healthy again after RecoverAfter")
	}
	if n := inv.Transitions(); n != 2 {
		t.Errorf("transitions = %d, want 2 (flaps inside the hysteresis are not advertised)", n)
	}
	// The device leaves sysfs (hot unplug): its units are gone.
	os.Remove(filepath.Join(host.Sysfs, "bus", "pci", "devices", "0000:bd:00.0"))
	if changed, _, _ := inv.Scan(); !changed {
		t.Fatal("removal is not a change")
	}
	if h := healthOf(inv, res); len(h) != 14 {
		t.Fatalf("after unplug %d units, want 14", len(h))
	}
	// A shared node (nvidiactl) missing makes every GPU unhealthy.
	os.Remove(filepath.Join(host.Dev, "nvidiactl"))
	inv.Scan()
	for id, ok := range healthOf(inv, res) {
		if ok {
			t.Errorf("%s healthy without nvidiactl", id)
		}
	}
}
