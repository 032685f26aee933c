package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/plinth-dev/plinth/test/e2e/cluster"
)

// TestSanityClusterWired runs csi-sanity against plinth as a cluster runs
// it: the CSI Controller service of a `plinth controller` (volume objects,
// placement over the cluster's PlinthNodes, the same request check the
// PVCs go through) and the CSI Node service of the `plinth node` pod that
// makes the volumes. The controller runs on the host with its own driver
// name, so that it provisions no PVC of the installed plinth's classes.
func TestSanityClusterWired(t *testing.T) {
	if e == nil {
		t.Skip("no cluster")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "controller.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, e.plinthBin, "controller", "--kubeconfig", e.c.Kubeconfig,
		"--driver-name", "sanity.plinth.example.com", "--namespace", "default", "--leader-elect=false",
		"--metrics-address=", "--csi-endpoint", "unix://"+sock, "--node-wait", "60s", "--v=2")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("plinth controller log:\n%s", out.String())
		}
	}()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("plinth controller did not serve CSI on %s within 60s:\n%s", sock, out.String())
		}
	}
	mnt := filepath.Join(cluster.KubeletDir, "plugins", "plinth-sanity")
	t.Cleanup(func() { _ = os.RemoveAll(mnt) })
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + filepath.Join(cluster.KubeletDir, "plugins", driver, "csi.sock")
	cfg.ControllerAddress = "unix://" + sock
	cfg.TargetPath = filepath.Join(mnt, "target")
	cfg.StagingPath = filepath.Join(mnt, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 128 << 20
	cfg.TestVolumeParameters = map[string]string{"pool": "local"}
	cfg.IdempotentCount = 2
	cfg.CreateTargetDir = func(p string) (string, error) { return p, os.MkdirAll(p, 0o750) }
	cfg.CreateStagingDir = cfg.CreateTargetDir
	cfg.CheckPath = func(p string) (sanity.PathKind, error) {
		fi, err := os.Lstat(p)
		switch {
		case os.IsNotExist(err):
			return sanity.PathIsNotFound, nil
		case err != nil:
			return "", err
		case fi.IsDir():
			return sanity.PathIsDir, nil
		case fi.Mode().IsRegular():
			return sanity.PathIsFile, nil
		}
		return sanity.PathIsOther, nil
	}
	logf("csi-sanity against plinth controller (%s) and plinth node (%s)", cfg.ControllerAddress, cfg.Address)
	sanity.Test(t, cfg)
}
