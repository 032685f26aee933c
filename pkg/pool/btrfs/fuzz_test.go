package btrfs

import "testing"

// FuzzParseQgroups: any TREE_SEARCH buffer (first byte: the item count)
// parses without panic, and the root refs and qgroup items it yields read
// as a state without panic.
func FuzzParseQgroups(f *testing.F) {
	f.Add(append([]byte{1}, searchResult(item{objectid: 258, typ: rootBackrefKey, offset: 257, data: rootRef(256, "n")})...))
	f.Add(append([]byte{3}, searchResult(item{typ: qgroupInfoKey, offset: 257, data: le64(1, 2, 3)})...))
	f.Add([]byte{0xff, 0, 1, 2})
	f.Fuzz(func(t *testing.T, out []byte) {
		if len(out) == 0 {
			return
		}
		items, err := parseItems(out[1:], uint32(out[0]%64))
		if err != nil {
			return
		}
		st := &fsState{subvols: map[uint64]subvol{}, groups: map[uint64]*qgroupInfo{}}
		for _, it := range items {
			if sv, ok := parseRootRef(it); ok {
				st.subvols[it.objectid] = sv
			}
		}
		parseQuotaItems(st, items)
		for id := range st.subvols {
			st.below(id)
		}
	})
}
