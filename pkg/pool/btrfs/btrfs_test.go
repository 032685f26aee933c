package btrfs

import (
	"encoding/binary"
	"slices"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

func TestIoctlArgSizes(t *testing.T) {
	if n := unsafe.Sizeof(searchKey{}); n != 104 {
		t.Errorf("btrfs_ioctl_search_key is 104 bytes, searchKey %d", n)
	}
	if n := unsafe.Sizeof(searchArgs{}); n != 4096 {
		t.Errorf("btrfs_ioctl_search_args is 4096 bytes, searchArgs %d", n)
	}
	if n := unsafe.Sizeof(inoLookupArgs{}); n != 4096 {
		t.Errorf("btrfs_ioctl_ino_lookup_args is 4096 bytes, inoLookupArgs %d", n)
	}
	if n, off := unsafe.Sizeof(volArgsV2{}), unsafe.Offsetof(volArgsV2{}.SubvolID); n != 4096 || off != 56 {
		t.Errorf("btrfs_ioctl_vol_args_v2 is 4096 bytes with subvolid at 56, volArgsV2 %d at %d", n, off)
	}
}

// searchResult lays items out as TREE_SEARCH returns them.
func searchResult(items ...item) []byte {
	var b []byte
	for _, it := range items {
		h := make([]byte, 32)
		binary.LittleEndian.PutUint64(h[8:], it.objectid)
		binary.LittleEndian.PutUint64(h[16:], it.offset)
		binary.LittleEndian.PutUint32(h[24:], it.typ)
		binary.LittleEndian.PutUint32(h[28:], uint32(len(it.data)))
		b = append(append(b, h...), it.data...)
	}
	return b
}

func le64(vs ...uint64) []byte {
	b := make([]byte, 8*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	return b
}

func rootRef(dirID uint64, name string) []byte {
	b := append(le64(dirID, 7), 0, 0)
	binary.LittleEndian.PutUint16(b[16:], uint16(len(name)))
	return append(b, name...)
}

func TestParseItems(t *testing.T) {
	want := []item{
		{objectid: 258, typ: rootBackrefKey, offset: 257, data: rootRef(256, "nested")},
		{objectid: 0, typ: qgroupInfoKey, offset: 257, data: le64(9, 4096, 4096, 4096, 4096)},
	}
	buf := searchResult(want...)
	got, err := parseItems(buf, 2)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got, cmp.AllowUnexported(item{})); d != "" {
		t.Errorf("parseItems (-want +got):\n%s", d)
	}
	for _, n := range []int{10, 40, len(buf) - 1} {
		if _, err := parseItems(buf[:n], 2); err == nil {
			t.Errorf("parseItems of %d of %d bytes: no error", n, len(buf))
		}
	}
}

func TestParseState(t *testing.T) {
	// A name with a newline and a forged line changes nothing: names are data.
	ref, ok := parseRootRef(item{objectid: 259, typ: rootBackrefKey, offset: 258, data: rootRef(300, "x\n0/257 0 0 none none")})
	if !ok || ref.parent != 258 || ref.dirID != 300 || ref.name != "x\n0/257 0 0 none none" {
		t.Errorf("parseRootRef = %+v, %v", ref, ok)
	}
	if _, ok := parseRootRef(item{typ: rootBackrefKey, data: rootRef(1, "abc")[:19]}); ok {
		t.Error("parseRootRef of a truncated name: ok")
	}
	g1 := qgroupID(1, 257)
	st := &fsState{groups: map[uint64]*qgroupInfo{}}
	parseQuotaItems(st, []item{
		{typ: qgroupStatusKey, data: le64(1, 5, statusSimple|statusInconsistent|1, 0, 3)},
		{typ: qgroupInfoKey, offset: 257, data: le64(5, 1000, 1000, 900, 900)},
		{typ: qgroupInfoKey, offset: g1, data: le64(5, 3000, 3000, 3000, 3000)},
		{typ: qgroupLimitKey, offset: g1, data: le64(limitMaxRfer, 64<<20, 0, 0, 0)},
		{typ: qgroupLimitKey, offset: 257, data: le64(0, 0, 0, 0, 0)},
		{objectid: 257, typ: qgroupRelationKey, offset: g1},
		{objectid: g1, typ: qgroupRelationKey, offset: 257},
		{objectid: 258, typ: qgroupRelationKey, offset: g1},
		{objectid: g1, typ: qgroupRelationKey, offset: 258},
		{typ: qgroupInfoKey, offset: 259, data: le64(1)}, // short: numbers read as 0
	})
	if !st.simple() || !st.inconsistent() || st.rescanning() {
		t.Errorf("status %#x: simple %v inconsistent %v rescanning %v", st.status, st.simple(), st.inconsistent(), st.rescanning())
	}
	want := map[uint64]*qgroupInfo{
		257: {referenced: 1000, exclusive: 900, parents: []uint64{g1}},
		258: {parents: []uint64{g1}},
		259: {},
		g1:  {referenced: 3000, exclusive: 3000, limit: 64 << 20, children: []uint64{257, 258}},
	}
	if d := cmp.Diff(want, st.groups, cmp.AllowUnexported(qgroupInfo{})); d != "" {
		t.Errorf("parseQuotaItems (-want +got):\n%s", d)
	}
	if got := st.used(257); got != 3000 {
		t.Errorf("used(257) = %d, want the level-1 group's 3000", got)
	}
	if got := qgroupString(g1); got != "1/257" {
		t.Errorf("qgroupString = %q", got)
	}
}

func TestBelow(t *testing.T) {
	st := &fsState{subvols: map[uint64]subvol{
		256: {parent: fsTreeID, name: "volumes"},
		257: {parent: 256, name: "pv-a"},
		258: {parent: 257, name: "n1"},
		259: {parent: 258, name: "n2"},
		260: {parent: 257, name: "snap"},
		261: {parent: 256, name: "pv-b"},
		262: {parent: 261, name: "other"},
		300: {parent: 301, name: "loop"}, // a cycle ends the walk
		301: {parent: 300, name: "loop"},
	}}
	for top, want := range map[uint64][]uint64{257: {259, 260, 258}, 261: {262}, 259: {}, 999: {}} {
		if got := st.below(top); !slices.Equal(got, want) {
			t.Errorf("below(%d) = %v, want %v (deepest first)", top, got, want)
		}
	}
}
