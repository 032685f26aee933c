package btrfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// What the pool reads about subvolumes and qgroups it reads with the
// TREE_SEARCH and INO_LOOKUP ioctls: ids and numbers straight from the
// kernel's trees. The text of `btrfs subvolume list` or `btrfs qgroup show`
// carries subvolume names a tenant chose (a newline in a name forges a line).

// ioctl numbers and on-disk constants from linux/btrfs.h and btrfs_tree.h.
const (
	iocTreeSearch     = 0xd0009411 // _IOWR(0x94, 17, struct btrfs_ioctl_search_args)
	iocInoLookup      = 0xd0009412 // _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)
	iocSubvolGetflags = 0x80089419 // _IOR(0x94, 25, __u64)
	iocSubvolSetflags = 0x4008941a // _IOW(0x94, 26, __u64)
	iocQuotaCtl       = 0xc0109428 // _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args)
	iocSnapDestroyV2  = 0x5000943f // _IOW(0x94, 63, struct btrfs_ioctl_vol_args_v2)

	subvolSpecByID = 1 << 4 // BTRFS_SUBVOL_SPEC_BY_ID

	quotaCtlEnableSimple = 4 // BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA (Linux 6.7)

	rootTreeID        = 1
	quotaTreeID       = 8
	fsTreeID          = 5 // the top-level subvolume
	firstFreeObjectID = 256
	lastFreeObjectID  = math.MaxUint64 - 255

	rootBackrefKey    = 144
	qgroupStatusKey   = 240
	qgroupInfoKey     = 242
	qgroupLimitKey    = 244
	qgroupRelationKey = 246

	statusRescan       = 1 << 1
	statusInconsistent = 1 << 2
	statusSimple       = 1 << 3
	limitMaxRfer       = 1 << 0
	subvolReadOnly     = 1 << 1
)

// searchKey is struct btrfs_ioctl_search_key.
type searchKey struct {
	TreeID, MinObjectID, MaxObjectID, MinOffset, MaxOffset, MinTransID, MaxTransID uint64
	MinType, MaxType, NrItems, _                                                   uint32
	_                                                                              [4]uint64
}

// searchArgs is struct btrfs_ioctl_search_args (4096 bytes).
type searchArgs struct {
	Key searchKey
	Buf [4096 - 104]byte
}

// inoLookupArgs is struct btrfs_ioctl_ino_lookup_args (4096 bytes).
type inoLookupArgs struct {
	TreeID, ObjectID uint64
	Name             [4080]byte
}

// volArgsV2 is struct btrfs_ioctl_vol_args_v2 with the subvolid arm of its
// last union (4096 bytes).
type volArgsV2 struct {
	FD, TransID, Flags uint64
	_                  [4]uint64
	SubvolID           uint64
	_                  [4032]byte
}

type item struct {
	objectid, offset uint64
	typ              uint32
	data             []byte
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// parseItems splits a TREE_SEARCH result of n items: each a 32-byte header
// (transid, objectid, offset, type, len) and len bytes of item.
func parseItems(buf []byte, n uint32) ([]item, error) {
	items := make([]item, 0, n)
	for i := uint32(0); i < n; i++ {
		if len(buf) < 32 {
			return nil, fmt.Errorf("tree search: item %d of %d: short header", i, n)
		}
		it := item{
			objectid: binary.LittleEndian.Uint64(buf[8:]),
			offset:   binary.LittleEndian.Uint64(buf[16:]),
			typ:      binary.LittleEndian.Uint32(buf[24:]),
		}
		size := binary.LittleEndian.Uint32(buf[28:])
		buf = buf[32:]
		if uint64(len(buf)) < uint64(size) {
			return nil, fmt.Errorf("tree search: item %d of %d: %d bytes past the buffer", i, n, size)
		}
		it.data = append([]byte(nil), buf[:size]...)
		buf = buf[size:]
		items = append(items, it)
	}
	return items, nil
}

// treeSearch returns the items of tree whose objectid lies in [minObj,
// maxObj] and whose type lies in [minType, maxType].
func treeSearch(fd int, tree, minObj, maxObj uint64, minType, maxType uint32) ([]item, error) {
	var args searchArgs
	k := &args.Key
	k.TreeID, k.MinObjectID, k.MaxObjectID = tree, minObj, maxObj
	k.MaxOffset, k.MaxTransID = math.MaxUint64, math.MaxUint64
	k.MinType, k.MaxType = minType, maxType
	var out []item
	for {
		k.NrItems = math.MaxUint32
		if err := ioctl(fd, iocTreeSearch, unsafe.Pointer(&args)); err != nil {
			return nil, err
		}
		if k.NrItems == 0 {
			return out, nil
		}
		items, err := parseItems(args.Buf[:], k.NrItems)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			// The range is one of whole keys: other types come back too.
			if it.typ >= minType && it.typ <= maxType && it.objectid >= minObj && it.objectid <= maxObj {
				out = append(out, it)
			}
		}
		last := items[len(items)-1]
		switch {
		case last.offset < math.MaxUint64:
			k.MinObjectID, k.MinType, k.MinOffset = last.objectid, last.typ, last.offset+1
		case last.typ < math.MaxUint8:
			k.MinObjectID, k.MinType, k.MinOffset = last.objectid, last.typ+1, 0
		case last.objectid < maxObj:
			k.MinObjectID, k.MinType, k.MinOffset = last.objectid+1, 0, 0
		default:
			return out, nil
		}
		if k.MinObjectID > maxObj {
			return out, nil
		}
	}
}

// inoLookup resolves inode ino of subvolume tree (0: the subvolume of fd)
// to its path inside that subvolume ("" for the subvolume's root, else with
// a trailing "/"), and returns the subvolume's id.
func inoLookup(fd int, tree, ino uint64) (uint64, string, error) {
	args := inoLookupArgs{TreeID: tree, ObjectID: ino}
	if err := ioctl(fd, iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return 0, "", err
	}
	name := args.Name[:]
	if i := strings.IndexByte(string(name), 0); i >= 0 {
		name = name[:i]
	}
	return args.TreeID, string(name), nil
}

// subvolOf returns the id of the subvolume whose root directory fd is;
// anything else is an error.
func subvolOf(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Ino != firstFreeObjectID {
		return 0, errors.New("not the root of a subvolume")
	}
	id, _, err := inoLookup(fd, 0, firstFreeObjectID)
	return id, err
}

// setWritable clears the read-only flag of the subvolume whose root fd is.
func setWritable(fd int) error {
	var flags uint64
	if err := ioctl(fd, iocSubvolGetflags, unsafe.Pointer(&flags)); err != nil {
		return err
	}
	if flags&subvolReadOnly == 0 {
		return nil
	}
	flags &^= subvolReadOnly
	return ioctl(fd, iocSubvolSetflags, unsafe.Pointer(&flags))
}

// destroySubvol deletes subvolume id of the filesystem of fd by its id, not
// by any path (CAP_SYS_ADMIN). One already gone is no error.
func destroySubvol(fd int, id uint64) error {
	args := volArgsV2{Flags: subvolSpecByID, SubvolID: id}
	if err := ioctl(fd, iocSnapDestroyV2, unsafe.Pointer(&args)); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// enableSimpleQuotas turns on simple quotas (squota) on the filesystem of
// fd; kernels before 6.7 answer EINVAL.
func enableSimpleQuotas(fd int) error {
	args := [2]uint64{quotaCtlEnableSimple, 0}
	return ioctl(fd, iocQuotaCtl, unsafe.Pointer(&args))
}

// subvol is a live subvolume: linked into its parent subvolume's directory
// dirID under name.
type subvol struct {
	parent, dirID uint64
	name          string
}

// qgroupInfo is one qgroup: its numbers, its limit (0: none) and relations.
type qgroupInfo struct {
	referenced, exclusive, limit int64
	parents, children            []uint64
}

// fsState is what the kernel says about subvolumes and qgroups now.
type fsState struct {
	quotas  bool   // quotas are enabled
	status  uint64 // qgroup status flags
	subvols map[uint64]subvol
	groups  map[uint64]*qgroupInfo

	children map[uint64][]uint64 // subvolumes by parent, made by below
}

func (s *fsState) simple() bool       { return s.status&statusSimple != 0 }
func (s *fsState) inconsistent() bool { return s.status&statusInconsistent != 0 }
func (s *fsState) rescanning() bool   { return s.status&statusRescan != 0 }

// qgroupID packs level/id as the kernel does.
func qgroupID(level uint16, id uint64) uint64 { return uint64(level)<<48 | id&(1<<48-1) }

// level1 is the qgroup that bounds a volume: 1/<its subvolume id>.
func level1(sub uint64) uint64 { return qgroupID(1, sub) }

func qgroupString(q uint64) string { return fmt.Sprintf("%d/%d", q>>48, q&(1<<48-1)) }

// readState reads the live subvolumes and the qgroups of the filesystem
// that dir is on.
func readState(dir string) (*fsState, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	st := &fsState{subvols: map[uint64]subvol{}, groups: map[uint64]*qgroupInfo{}}
	refs, err := treeSearch(fd, rootTreeID, firstFreeObjectID, lastFreeObjectID, rootBackrefKey, rootBackrefKey)
	if err != nil {
		return nil, fmt.Errorf("read subvolumes of %s: %w", dir, err)
	}
	for _, it := range refs {
		if sv, ok := parseRootRef(it); ok {
			st.subvols[it.objectid] = sv
		}
	}
	qitems, err := treeSearch(fd, quotaTreeID, 0, math.MaxUint64, qgroupStatusKey, qgroupRelationKey)
	if errors.Is(err, unix.ENOENT) {
		return st, nil // no quota tree: quotas are off
	}
	if err != nil {
		return nil, fmt.Errorf("read qgroups of %s: %w", dir, err)
	}
	st.quotas = true
	parseQuotaItems(st, qitems)
	return st, nil
}

// parseRootRef reads a ROOT_BACKREF item: (child, type, parent) → struct
// btrfs_root_ref {dirid, sequence, name_len} and the name.
func parseRootRef(it item) (subvol, bool) {
	if it.typ != rootBackrefKey || len(it.data) < 18 {
		return subvol{}, false
	}
	n := int(binary.LittleEndian.Uint16(it.data[16:]))
	if len(it.data) < 18+n {
		return subvol{}, false
	}
	return subvol{parent: it.offset, dirID: binary.LittleEndian.Uint64(it.data), name: string(it.data[18 : 18+n])}, true
}

// parseQuotaItems fills st from quota tree items.
func parseQuotaItems(st *fsState, items []item) {
	group := st.group
	u64 := func(b []byte, i int) int64 {
		if len(b) < i+8 {
			return 0
		}
		v := binary.LittleEndian.Uint64(b[i:])
		if v > math.MaxInt64 {
			return math.MaxInt64
		}
		return int64(v)
	}
	for _, it := range items {
		switch it.typ {
		case qgroupStatusKey:
			if len(it.data) >= 24 {
				st.status = binary.LittleEndian.Uint64(it.data[16:])
			}
		case qgroupInfoKey:
			g := group(it.offset)
			g.referenced, g.exclusive = u64(it.data, 8), u64(it.data, 24)
		case qgroupLimitKey:
			g := group(it.offset)
			if len(it.data) >= 16 && binary.LittleEndian.Uint64(it.data)&limitMaxRfer != 0 {
				g.limit = u64(it.data, 8)
			}
		case qgroupRelationKey:
			// Stored both ways; keep the one from member to parent.
			if it.objectid>>48 < it.offset>>48 {
				group(it.objectid).parents = append(group(it.objectid).parents, it.offset)
				group(it.offset).children = append(group(it.offset).children, it.objectid)
			}
		}
	}
}

// link and unlink keep st in step with a relation the pool just changed,
// for the next volume a sweep looks at.
func (s *fsState) link(child, parent uint64) {
	s.group(child).parents = append(s.group(child).parents, parent)
	s.group(parent).children = append(s.group(parent).children, child)
}

func (s *fsState) unlink(child, parent uint64) {
	drop := func(ids []uint64, id uint64) []uint64 {
		return slices.DeleteFunc(ids, func(x uint64) bool { return x == id })
	}
	s.group(child).parents = drop(s.group(child).parents, parent)
	s.group(parent).children = drop(s.group(parent).children, child)
}

func (s *fsState) group(q uint64) *qgroupInfo {
	g := s.groups[q]
	if g == nil {
		g = &qgroupInfo{}
		s.groups[q] = g
	}
	return g
}

// below returns every live subvolume strictly below subvolume top (by the
// kernel's parent links, not by paths), deepest first.
func (s *fsState) below(top uint64) []uint64 {
	if s.children == nil {
		s.children = map[uint64][]uint64{}
		for id, sv := range s.subvols {
			s.children[sv.parent] = append(s.children[sv.parent], id)
		}
	}
	type found struct {
		id    uint64
		depth int
	}
	var out []found
	seen := map[uint64]bool{top: true}
	for next := []found{{id: top}}; len(next) > 0; next = next[1:] {
		for _, c := range s.children[next[0].id] {
			if !seen[c] {
				seen[c] = true
				f := found{id: c, depth: next[0].depth + 1}
				out = append(out, f)
				next = append(next, f)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].depth != out[j].depth {
			return out[i].depth > out[j].depth
		}
		return out[i].id > out[j].id
	})
	ids := make([]uint64, len(out))
	for i, f := range out {
		ids[i] = f.id
	}
	return ids
}

// openBelow opens the root of subvolume target, which lies below the
// subvolume whose root is fd, by the path the kernel's links give, resolved
// beneath fd without following any symlink; it checks that what it opened
// is target.
func (s *fsState) openBelow(fd int, top, target uint64) (int, error) {
	var parts []string
	for cur, steps := target, 0; cur != top; steps++ {
		sv, ok := s.subvols[cur]
		if !ok || steps > len(s.subvols) {
			return -1, fmt.Errorf("subvolume %d is not below %d", target, top)
		}
		if sv.name == "" || sv.name == "." || sv.name == ".." || strings.ContainsAny(sv.name, "/\x00") {
			return -1, fmt.Errorf("subvolume %d has the name %q", cur, sv.name)
		}
		_, dir, err := inoLookup(fd, sv.parent, sv.dirID)
		if err != nil {
			return -1, fmt.Errorf("look up directory of subvolume %d: %w", cur, err)
		}
		parts = append(parts, dir+sv.name)
		cur = sv.parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	nfd, err := unix.Openat2(fd, strings.Join(parts, "/"), &how)
	if err != nil {
		return -1, fmt.Errorf("open subvolume %d below %d: %w", target, top, err)
	}
	if id, err := subvolOf(nfd); err != nil || id != target {
		unix.Close(nfd)
		return -1, fmt.Errorf("open subvolume %d below %d: found %d (%v)", target, top, id, err)
	}
	return nfd, nil
}
