package btrfs

import "testing"

// FuzzParseQgroups: any output of `btrfs qgroup show` parses without panic.
func FuzzParseQgroups(f *testing.F) {
	f.Add([]byte("Qgroupid Referenced Exclusive Max\n0/256 16384 16384 10485760 none a\n"))
	f.Add([]byte("0/ x y\n0/18446744073709551616 1 1 1\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		for id, g := range parseQgroups(out) {
			_ = id
			_ = g
		}
	})
}
