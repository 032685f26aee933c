// Package sanity runs csi-sanity (github.com/kubernetes-csi/csi-test/v5)
// in-process against plinth standalone on real loop devices and mounts,
// once per configuration.
package sanity

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/test/testenv"
)

type config struct {
	backingFs  string // filesystem the pool lives on
	backend    string
	fsType     string // pool's default fs type
	accessType string // mount | block
	size       int64  // sanity's test volume size
}

var configs = map[string]config{
	"file-ext4":  {backingFs: "xfs", backend: "file", fsType: "ext4", accessType: "mount", size: 64 << 20},
	"file-xfs":   {backingFs: "xfs", backend: "file", fsType: "xfs", accessType: "mount", size: 320 << 20},
	"file-block": {backingFs: "xfs", backend: "file", accessType: "block", size: 64 << 20},
	"btrfs":      {backingFs: "btrfs", backend: "btrfs", accessType: "mount", size: 64 << 20},
}

const configEnv = "PLINTH_SANITY_CONFIG"

var summaryRE = regexp.MustCompile(`Ran (\d+) of (\d+) Specs.*\n.*?(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`)

// TestSanity runs each configuration in its own process: Ginkgo runs one
// suite per process.
func TestSanity(t *testing.T) {
	if os.Getenv(configEnv) != "" {
		t.Skip("in a child process: TestSanityConfig runs")
	}
	testenv.RequireHost(t)
	for _, name := range []string{"file-ext4", "file-xfs", "file-block", "btrfs"} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestSanityConfig$", "-test.v", "-ginkgo.no-color")
			cmd.Env = append(os.Environ(), configEnv+"="+name)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			m := summaryRE.FindStringSubmatch(out.String())
			if err != nil || m == nil {
				t.Fatalf("csi-sanity %s failed: %v\n%s", name, err, out.String())
			}
			t.Logf("csi-sanity %s: ran %s of %s specs: %s passed, %s failed, %s pending, %s skipped", name, m[1], m[2], m[3], m[4], m[5], m[6])
			if m[4] != "0" {
				t.Errorf("csi-sanity %s: %s failures\n%s", name, m[4], out.String())
			}
			if testing.Verbose() {
				for _, skip := range regexp.MustCompile(`\[SKIPPED\][^\n]*\n[^\n]*\n`).FindAllString(out.String(), -1) {
					t.Log(skip)
				}
			}
		})
	}
}

// TestSanityConfig runs csi-sanity for the configuration named in the
// environment (set by TestSanity).
func TestSanityConfig(t *testing.T) {
	name := os.Getenv(configEnv)
	if name == "" {
		t.Skip("run through TestSanity, which sets " + configEnv)
	}
	c, ok := configs[name]
	if !ok {
		t.Fatalf("unknown config %q", name)
	}
	testenv.RequireHost(t)
	backing := testenv.Filesystem(t, c.backingFs, 8<<30)
	root := t.TempDir()
	poolDir := filepath.Join(backing, "pool")
	os.MkdirAll(poolDir, 0o700) // plinth refuses a missing pool directory
	metricsAddr := freeAddr(t)
	sock := testenv.Standalone(t, app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint:       "unix://" + filepath.Join(root, "csi.sock"),
		Root:           filepath.Join(root, "state"),
		Pools:          []app.PoolSpec{{Name: "p1", Backend: c.backend, Dir: poolDir, FsType: c.fsType}},
		AllowedPaths:   []string{root},
		MetricsAddress: metricsAddr,
	}})
	mnt := filepath.Join(root, "mnt")
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(mnt, "target")
	cfg.StagingPath = filepath.Join(mnt, "staging")
	cfg.TestVolumeSize = c.size
	cfg.TestVolumeExpandSize = 2 * c.size
	cfg.TestVolumeAccessType = c.accessType
	cfg.TestVolumeParameters = map[string]string{"pool": "p1"}
	// ControllerModifyVolume (a VolumeAttributesClass): an IO limit, which
	// every pool takes.
	cfg.TestVolumeMutableParameters = map[string]string{"readIOPS": "5000", "writeBytesPerSecond": "100Mi"}
	cfg.TestNodeVolumeAttachLimit = true
	cfg.IdempotentCount = 2
	testenv.SanityPaths(&cfg)
	fmt.Fprintf(os.Stderr, "csi-sanity config %s: pool on %s (%s backend)\n", name, poolDir, c.backend)
	sanity.Test(t, cfg)
	checkMetricsAfterSanity(t, metricsAddr)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// checkMetricsAfterSanity: after the whole csi-sanity run, /metrics holds
// latency histograms of the calls it made, by method and code, failed
// calls (the sanity suite's bad requests) among them.
func checkMetricsAfterSanity(t *testing.T, addr string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	body := string(b)
	for _, want := range []string{
		`plinth_csi_operation_duration_seconds_bucket{code="OK",method="CreateVolume",le="+Inf"}`,
		`plinth_csi_operation_duration_seconds_bucket{code="OK",method="NodeStageVolume",le="+Inf"}`,
		`plinth_csi_operation_duration_seconds_bucket{code="OK",method="NodePublishVolume",le="+Inf"}`,
		`plinth_csi_operation_duration_seconds_bucket{code="InvalidArgument",method="CreateVolume",le="+Inf"}`,
		`plinth_csi_operation_duration_seconds_bucket{code="InvalidArgument",method="NodeStageVolume",le="+Inf"}`,
		`plinth_pool_allocatable_bytes{backend=`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics after csi-sanity lacks %s", want)
		}
	}
}
