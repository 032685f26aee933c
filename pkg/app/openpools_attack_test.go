// Records and versions, from an outside review: records whose version field a
// careless or newer writer made odd must be refused and left as they are.
package app

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// A volume record of a version above any int (a newer version still) makes
// OpenPools fail the whole start instead of standing that pool up as
// pool.Unavailable beside the pools that open: Format.version reports an
// int overflow, not durable.ErrNewer.
func TestAttackOpenPoolsHugeVersionIsUnavailable(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	os.MkdirAll(filepath.Join(b, "volumes"), 0o700)
	rec := `{"schema": 99999999999999999999, "id": "pv-a", "name": "a", "pool": "b", "capacityBytes": 1048576, "mode": "filesystem", "fsType": "ext4", "state": "ready"}`
	if err := os.WriteFile(filepath.Join(b, "volumes", "pv-a.json"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	pools, err := OpenPools(context.Background(), []PoolSpec{{Name: "a", Backend: "file", Dir: a}, {Name: "b", Backend: "file", Dir: b}}, nil, nil)
	if err != nil {
		t.Fatalf("OpenPools = %v: the start fails; want pool b unavailable and pool a serving", err)
	}
	if _, ok := pools[1].(pool.Unavailable); !ok {
		t.Errorf("pool b: %#v, want pool.Unavailable", pools[1])
	}
}
