package csiclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/pkg/csiclient"
	"github.com/plinth-dev/plinth/test/testenv"
)

// cli runs `plinth ARGS...` in process, as cmd/plinth does.
type cli struct {
	t        *testing.T
	endpoint string // given as --endpoint unless empty
	getenv   func(string) string
}

type outcome struct {
	stdout, stderr string
	code           int
}

func (c cli) run(args ...string) outcome {
	c.t.Helper()
	if c.endpoint != "" {
		args = append(args, "--endpoint", c.endpoint)
	}
	var o, e bytes.Buffer
	code := csiclient.Main(context.Background(), args, csiclient.Env{Stdout: &o, Stderr: &e, Getenv: c.getenv, DefaultEndpoint: "unix:///nonexistent/plinth/csi.sock"})
	return outcome{o.String(), e.String(), code}
}

// ok runs a command that must succeed, and returns its stdout.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 || r.stderr != "" {
		c.t.Fatalf("plinth %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// okJSON runs a command with -o json that must succeed, into v.
func (c cli) okJSON(v any, args ...string) {
	c.t.Helper()
	out := c.ok(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("plinth %s -o json: %v:\n%s", strings.Join(args, " "), err, out)
	}
}

// fails runs a command that must exit with code, and returns its stderr.
func (c cli) fails(code int, args ...string) string {
	c.t.Helper()
	r := c.run(args...)
	if r.code != code || r.stdout != "" {
		c.t.Fatalf("plinth %s: exit %d (want %d), stdout %q, stderr %q", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	return r.stderr
}

// standalone runs a real plinth standalone in process, with file pool
// "fast" (ext4 volumes) on a reflink xfs, and returns its endpoint.
func standalone(t *testing.T) string {
	testenv.RequireHost(t)
	xfs := testenv.Filesystem(t, "xfs", 2<<30)
	dir := filepath.Join(xfs, "fast")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	sock := testenv.Standalone(t, app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(root, "csi.sock"),
		Root:     filepath.Join(root, "state"),
		Pools:    []app.PoolSpec{{Name: "fast", Backend: "file", Dir: dir, FsType: "ext4"}},
	}})
	return "unix://" + sock
}

// rowOf is the table row that starts with id (nil: none).
func rowOf(table, id string) []string {
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == id {
			return f
		}
	}
	return nil
}

// The whole life of volumes and snapshots through the commands, against a
// real plinth: what each prints as a table and as JSON.
func TestVolumesAndSnapshots(t *testing.T) {
	ep := standalone(t)
	c := cli{t: t, endpoint: ep}

	var vol csiclient.Volume
	c.okJSON(&vol, "volume", "create", "vol-a", "--size", "256Mi", "--param", "pool=fast", "--param", "provisioning=thin")
	want := csiclient.Volume{ID: vol.ID, CapacityBytes: 256 << 20, Topology: []map[string]string{{"topology.plinth.example.com/node": "node-1"}},
		Context: map[string]string{"pool": "fast", "mode": "filesystem", "fsType": "ext4"}}
	if diff := cmp.Diff(want, vol); vol.ID == "" || diff != "" {
		t.Fatalf("created volume (-want +got):\n%s", diff)
	}
	// CSI's create is idempotent: the same name is the same volume; the
	// same name with another size is AlreadyExists, as gRPC says it.
	var again csiclient.Volume
	c.okJSON(&again, "volume", "create", "vol-a", "--param", "pool=fast", "--size", "256Mi")
	if again.ID != vol.ID {
		t.Errorf("create vol-a twice: IDs %s and %s", vol.ID, again.ID)
	}
	if stderr := c.fails(1, "volume", "create", "vol-a", "--size", "384Mi", "--param", "pool=fast"); !strings.HasPrefix(stderr, "plinth volume create: AlreadyExists: ") {
		t.Errorf("create vol-a again, larger: stderr %q", stderr)
	}

	// Tables: a header, aligned columns, human sizes; flags after or before
	// the arguments.
	list := c.ok("volume", "list")
	if !regexp.MustCompile(`^ID +CAPACITY +NODE +POOL +MODE +FSTYPE +SOURCE\n`).MatchString(list) {
		t.Errorf("volume list header:\n%s", list)
	}
	if diff := cmp.Diff([]string{vol.ID, "256MiB", "node-1", "fast", "filesystem", "ext4", "-"}, rowOf(list, vol.ID)); diff != "" {
		t.Errorf("volume list row (-want +got):\n%s\n%s", diff, list)
	}
	if got := c.ok("volume", "get", "-o", "table", vol.ID); rowOf(got, vol.ID) == nil || strings.Count(got, "\n") != 2 {
		t.Errorf("volume get: want a header and one row:\n%s", got)
	}
	var got csiclient.Volume
	c.okJSON(&got, "volume", "get", vol.ID)
	if diff := cmp.Diff(vol, got); diff != "" {
		t.Errorf("volume get -o json (-create +get):\n%s", diff)
	}

	var exp csiclient.Expansion
	c.okJSON(&exp, "volume", "expand", vol.ID, "--size", "0.5Gi")
	if diff := cmp.Diff(csiclient.Expansion{VolumeID: vol.ID, CapacityBytes: 512 << 20, NodeExpansionRequired: true}, exp); diff != "" {
		t.Errorf("volume expand (-want +got):\n%s", diff)
	}
	if row := rowOf(c.ok("volume", "get", vol.ID), vol.ID); len(row) < 2 || row[1] != "512MiB" {
		t.Errorf("volume get after expand to 0.5Gi: %q", row)
	}
	// Expanding to the size it has is done already.
	if out := c.ok("volume", "expand", vol.ID, "--size", "512Mi"); !regexp.MustCompile(`(?m)^` + vol.ID + ` +512MiB +required$`).MatchString(out) {
		t.Errorf("volume expand to its size:\n%s", out)
	}

	var snap csiclient.Snapshot
	c.okJSON(&snap, "snapshot", "create", "snap-a", "--volume", vol.ID)
	if snap.ID == "" || snap.SourceVolumeID != vol.ID || !snap.ReadyToUse || snap.SizeBytes != 512<<20 || time.Since(snap.CreationTime) > time.Hour {
		t.Errorf("snapshot create: %+v", snap)
	}
	for _, args := range [][]string{{"snapshot", "list"}, {"snapshot", "list", "--volume", vol.ID}} {
		var snaps []csiclient.Snapshot
		c.okJSON(&snaps, args...)
		if diff := cmp.Diff([]csiclient.Snapshot{snap}, snaps); diff != "" {
			t.Errorf("%s (-want +got):\n%s", args, diff)
		}
		table := c.ok(args...)
		if row := rowOf(table, snap.ID); len(row) != 5 || row[1] != vol.ID || row[2] != "512MiB" || row[3] != "true" {
			t.Errorf("%s table:\n%s", args, table)
		}
	}

	var restored, clone csiclient.Volume
	c.okJSON(&restored, "volume", "create", "vol-b", "--size", "512Mi", "--from-snapshot", snap.ID)
	c.okJSON(&clone, "volume", "create", "vol-c", "--size", "512Mi", "--from-volume", vol.ID, "--access-mode", "single-node-single-writer")
	if restored.SourceSnapshotID != snap.ID || clone.SourceVolumeID != vol.ID {
		t.Errorf("sources: restored %+v, clone %+v", restored, clone)
	}
	list = c.ok("volume", "list")
	if row := rowOf(list, restored.ID); len(row) != 8 || row[6] != "snapshot" || row[7] != snap.ID {
		t.Errorf("restored volume's row:\n%s", list)
	}
	if row := rowOf(list, clone.ID); len(row) != 8 || row[6] != "volume" || row[7] != vol.ID {
		t.Errorf("cloned volume's row:\n%s", list)
	}
	// The default endpoint comes from $CSI_ENDPOINT when it is set.
	var all []csiclient.Volume
	cli{t: t, getenv: func(k string) string { return map[string]string{csiclient.EndpointEnv: ep}[k] }}.okJSON(&all, "volume", "list")
	if len(all) != 3 {
		t.Errorf("volume list through $CSI_ENDPOINT: %d volumes, want 3", len(all))
	}

	for _, args := range [][]string{{"volume", "delete", restored.ID}, {"volume", "delete", clone.ID, "--ignore-not-found"}, {"snapshot", "delete", snap.ID}} {
		if out := c.ok(args...); out != args[0]+" "+args[2]+" deleted\n" {
			t.Errorf("%s: %q", args, out)
		}
	}
	// -o json of a delete is what it was: kind, id, deleted (notFound is
	// left out).
	var deletedJSON map[string]any
	c.okJSON(&deletedJSON, "volume", "delete", vol.ID)
	if diff := cmp.Diff(map[string]any{"kind": "volume", "id": vol.ID, "deleted": true}, deletedJSON); diff != "" {
		t.Errorf("volume delete -o json (-want +got):\n%s", diff)
	}
	// Deleted again: CSI's DeleteVolume says OK, the client says it was
	// not there (exit 1 unless --ignore-not-found, as kubectl delete).
	if stderr := c.fails(1, "volume", "delete", vol.ID, "-o", "json"); !strings.HasPrefix(stderr, "plinth volume delete: NotFound: volume "+vol.ID+" does not exist; nothing deleted") {
		t.Errorf("volume delete of a deleted volume: %q", stderr)
	}
	var deleted csiclient.Deleted
	c.okJSON(&deleted, "volume", "delete", vol.ID, "--ignore-not-found")
	if deleted != (csiclient.Deleted{Kind: "volume", ID: vol.ID, Deleted: false, NotFound: true}) {
		t.Errorf("volume delete --ignore-not-found -o json of a deleted volume: %+v", deleted)
	}
	var snapDeleted map[string]any
	c.okJSON(&snapDeleted, "snapshot", "delete", snap.ID, "--ignore-not-found")
	if diff := cmp.Diff(map[string]any{"kind": "snapshot", "id": snap.ID, "deleted": false, "notFound": true}, snapDeleted); diff != "" {
		t.Errorf("snapshot delete --ignore-not-found -o json of a deleted snapshot (-want +got):\n%s", diff)
	}
	var vols []csiclient.Volume
	var snaps []csiclient.Snapshot
	c.okJSON(&vols, "volume", "list")
	c.okJSON(&snaps, "snapshot", "list")
	if vols == nil || len(vols) != 0 || snaps == nil || len(snaps) != 0 {
		t.Errorf("after deleting everything: volumes %v, snapshots %v; want two empty JSON lists", vols, snaps)
	}
	if table := c.ok("volume", "list"); strings.Count(table, "\n") != 1 {
		t.Errorf("empty volume list: want only the header:\n%s", table)
	}
}

// What the commands say when something is wrong: the gRPC status's code
// and message (exit 1), or one line about the command line and where to
// look (exit 2).
func TestErrors(t *testing.T) {
	ep := standalone(t)
	c := cli{t: t, endpoint: ep}
	var vol csiclient.Volume
	c.okJSON(&vol, "volume", "create", "vol-e", "--size", "256Mi")

	// CSI's delete of what does not exist answers OK; the client looks
	// first and says so: exit 1, as kubectl delete, or with
	// --ignore-not-found exit 0 and a line that nothing was deleted.
	for _, kind := range []string{"volume", "snapshot"} {
		want := "plinth " + kind + " delete: NotFound: " + kind + " not-an-id does not exist; nothing deleted (--ignore-not-found: exit 0)\n"
		if stderr := c.fails(1, kind, "delete", "not-an-id"); stderr != want {
			t.Errorf("%s delete of an unknown ID:\n got %q\nwant %q", kind, stderr, want)
		}
		if out := c.ok(kind, "delete", "--ignore-not-found", "not-an-id"); out != kind+" not-an-id did not exist; nothing deleted\n" {
			t.Errorf("%s delete --ignore-not-found of an unknown ID: %q", kind, out)
		}
	}

	if stderr := c.fails(1, "volume", "get", "no-such-volume"); !strings.HasPrefix(stderr, "plinth volume get: NotFound: ") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("get of an unknown ID: %q", stderr)
	}
	if stderr := c.fails(1, "volume", "expand", "no-such-volume", "--size", "2Gi"); !strings.HasPrefix(stderr, "plinth volume expand: NotFound: ") {
		t.Errorf("expand of an unknown ID: %q", stderr)
	}
	if stderr := c.fails(1, "snapshot", "create", "snap-e", "--volume", "no-such-volume"); !strings.HasPrefix(stderr, "plinth snapshot create: NotFound: ") {
		t.Errorf("snapshot of an unknown volume: %q", stderr)
	}
	if stderr := c.fails(1, "volume", "create", "vol-f", "--size", "1Gi", "--param", "pool=nope"); !strings.Contains(stderr, "plinth volume create: ") || !strings.Contains(stderr, "nope") {
		t.Errorf("create in an unknown pool: %q", stderr)
	}

	want := "plinth volume expand: volume " + vol.ID + " is 256MiB, more than the 128MiB asked: volumes do not shrink\n"
	if stderr := c.fails(1, "volume", "expand", vol.ID, "--size", "128Mi"); stderr != want {
		t.Errorf("expand below the volume's size:\n got %q\nwant %q", stderr, want)
	}
	if row := rowOf(c.ok("volume", "get", vol.ID), vol.ID); len(row) < 2 || row[1] != "256MiB" {
		t.Errorf("after a refused shrink: %q", row)
	}

	usage := map[string]struct {
		args []string
		want string
	}{
		"bad size":              {[]string{"volume", "expand", vol.ID, "--size", "2Gx"}, `invalid value "2Gx" for flag -size: not a size: want a quantity such as 1Gi, 500Mi or 1G`},
		"zero size":             {[]string{"volume", "create", "v", "--size", "0"}, "a size must be more than 0"},
		"size without a unit":   {[]string{"volume", "create", "v", "--size", "10"}, `invalid value "10" for flag -size: 10 has no unit (a bare number would be bytes): give one, as in --size 10Gi`},
		"expand without a unit": {[]string{"volume", "expand", vol.ID, "--size", "2048"}, `invalid value "2048" for flag -size: 2048 has no unit (a bare number would be bytes): give one, as in --size 2048Gi`},
		"exponent, no unit":     {[]string{"volume", "create", "v", "--size", "1e9"}, "1e9 has no unit (a bare number would be bytes): give one, as in --size 10Gi"},
		"millibytes":            {[]string{"volume", "create", "v", "--size", "500m"}, `"m" is not a unit of bytes: give one of Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, as in --size 500Gi`},
		"no size":               {[]string{"volume", "create", "v"}, "--size is required"},
		"no name":               {[]string{"volume", "create", "--size", "1Gi"}, "missing NAME"},
		"two names":             {[]string{"volume", "create", "a", "b", "--size", "1Gi"}, `unexpected argument "b"`},
		"two sources":           {[]string{"volume", "create", "v", "--size", "1Gi", "--from-snapshot", "s", "--from-volume", "v"}, "give one source at most"},
		"block with fs":         {[]string{"volume", "create", "v", "--size", "1Gi", "--block", "--fs-type", "xfs"}, "not --block"},
		"bad access mode":       {[]string{"volume", "create", "v", "--size", "1Gi", "--access-mode", "rwx"}, "want one of single-node-writer, "},
		"bad param":             {[]string{"volume", "create", "v", "--size", "1Gi", "--param", "pool"}, "want KEY=VALUE"},
		"param twice":           {[]string{"volume", "create", "v", "--size", "1Gi", "--param", "pool=a", "--param", "pool=b"}, "parameter pool given twice"},
		"snapshot of nothing":   {[]string{"snapshot", "create", "s"}, "--volume is required"},
		"bad output":            {[]string{"volume", "list", "-o", "yaml"}, `-o "yaml": want table or json`},
		"bad timeout":           {[]string{"volume", "list", "--timeout", "0s"}, "--timeout must be positive"},
		"unknown flag":          {[]string{"volume", "get", "x", "--force"}, "flag provided but not defined: -force"},
		"missing ID":            {[]string{"snapshot", "delete"}, "missing ID"},
		"endpoint not unix://":  {[]string{"volume", "list", "--endpoint", "tcp://localhost:1"}, "--endpoint: "},
		"expand without a size": {[]string{"volume", "expand", vol.ID}, "--size is required"},
	}
	for name, tc := range usage {
		t.Run(name, func(t *testing.T) {
			stderr := cli{t: t}.fails(2, tc.args...) // refused before any connection
			cmd := "plinth " + tc.args[0] + " " + tc.args[1]
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 2 || !strings.HasPrefix(lines[0], cmd+": ") || !strings.Contains(lines[0], tc.want) || lines[1] != `Run "`+cmd+` -h" for its flags.` {
				t.Errorf("stderr %q: want two lines, %q and a pointer to -h", stderr, tc.want)
			}
		})
	}
	for _, args := range [][]string{{"volume", "frob"}, {"snapshot", "expand", "x"}} {
		if stderr := c.fails(2, args...); !strings.Contains(stderr, `unknown command "`+args[1]+`"`) || !strings.Contains(stderr, `"plinth `+args[0]+` -h"`) {
			t.Errorf("%s: %q", args, stderr)
		}
	}
}

// The lists read every page: with one entry a page, ListVolumes and
// ListSnapshots hand out next tokens that the client follows.
func TestListPages(t *testing.T) {
	ep := standalone(t)
	c := cli{t: t, endpoint: ep}
	ids := map[string]bool{}
	for _, name := range []string{"p-1", "p-2", "p-3"} {
		var v csiclient.Volume
		c.okJSON(&v, "volume", "create", name, "--size", "64Mi")
		ids[v.ID] = true
		c.ok("snapshot", "create", name+"-snap", "--volume", v.ID)
	}
	ctx := context.Background()
	client, err := csiclient.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.PageSize = 1
	vols, err := client.ListVolumes(ctx)
	if err != nil || len(vols) != 3 {
		t.Fatalf("ListVolumes by pages of 1: %v, %v", vols, err)
	}
	for _, v := range vols {
		if !ids[v.ID] {
			t.Errorf("listed %s, not created", v.ID)
		}
	}
	if snaps, err := client.ListSnapshots(ctx, ""); err != nil || len(snaps) != 3 {
		t.Errorf("ListSnapshots by pages of 1: %v, %v", snaps, err)
	}
}

// Every unit of bytes is a size: the command line is accepted and the
// command goes on to the endpoint (none here).
func TestSizeUnits(t *testing.T) {
	for _, size := range []string{"10Gi", "1.5Ti", "500Mi", "64Ki", "1Pi", "1Ei", "10G", "500M", "1T", "64k", "1P", "1E", "0.5Gi", "+1Gi"} {
		stderr := cli{t: t}.fails(1, "volume", "create", "v", "--size", size)
		if !strings.HasPrefix(stderr, "plinth volume create: cannot reach ") {
			t.Errorf("--size %s: %q", size, stderr)
		}
	}
}

// An endpoint nobody serves is "cannot reach" at once; one that accepts
// and never answers is "cannot reach" when --timeout ends. Neither needs
// root.
func TestCannotReach(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // a socket file nobody listens on, as a killed plinth leaves
	silent := filepath.Join(dir, "silent.sock")
	sl, err := net.Listen("unix", silent)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	go func() {
		for {
			conn, err := sl.Accept()
			if err != nil {
				return
			}
			defer conn.Close() // held open, never answered
		}
	}()
	for name, tc := range map[string]struct {
		endpoint string
		timeout  string
		within   time.Duration
	}{
		"no socket":     {"unix://" + filepath.Join(dir, "none.sock"), "30s", 10 * time.Second},
		"stale socket":  {"unix://" + stale, "30s", 10 * time.Second},
		"never answers": {"unix://" + silent, "1s", 10 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			stderr := cli{t: t, endpoint: tc.endpoint}.fails(1, "volume", "list", "--timeout", tc.timeout)
			if took := time.Since(start); took > tc.within {
				t.Errorf("took %v", took)
			}
			if want := "plinth volume list: cannot reach " + tc.endpoint + " (is plinth standalone running there?): "; !strings.HasPrefix(stderr, want) {
				t.Errorf("stderr %q, want it to start %q", stderr, want)
			}
		})
	}
}
