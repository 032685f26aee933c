package btrfs

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseQgroups(t *testing.T) {
	// btrfs-progs v6.2, `btrfs qgroup show --raw -re`.
	out := []byte(`Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path 
--------    ----------    ---------  --------------  -------------   ---- 
0/5              16384        16384            none           none   <toplevel>
0/256          1064960      1064960        10485760           none   volumes/pv-1
0/257            16384        16384            none           none   <stale>
1/100            16384        16384            none           none   
garbage line
`)
	want := map[uint64]qgroup{
		5:   {referenced: 16384},
		256: {referenced: 1064960, limit: 10485760},
		257: {referenced: 16384},
	}
	if d := cmp.Diff(want, parseQgroups(out), cmp.AllowUnexported(qgroup{})); d != "" {
		t.Errorf("parseQgroups (-want +got):\n%s", d)
	}
}
