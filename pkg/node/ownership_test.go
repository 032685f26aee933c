package node

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// The decisions of this file's tests run on plain data: what stat says of
// each path and the mount table are tables here (fakeHost); nothing is
// mounted, attached or read from the machine, and no root is needed.

// files is what stat says of the paths of a test world.
type files map[string]unix.Stat_t

func fakeHost(f files, table []mount.Info) host {
	return host{
		stat: func(path string) (unix.Stat_t, error) {
			if st, ok := f[path]; ok {
				return st, nil
			}
			return unix.Stat_t{}, unix.ENOENT
		},
		mounts: func() ([]mount.Info, error) { return table, nil },
	}
}

func blockDev(major, minor uint32) unix.Stat_t {
	return unix.Stat_t{Mode: unix.S_IFBLK | 0o600, Rdev: unix.Mkdev(major, minor)}
}

func charDev(major, minor uint32) unix.Stat_t {
	return unix.Stat_t{Mode: unix.S_IFCHR | 0o600, Rdev: unix.Mkdev(major, minor)}
}

func dirOn(major, minor uint32, ino uint64) unix.Stat_t {
	return unix.Stat_t{Mode: unix.S_IFDIR | 0o750, Dev: unix.Mkdev(major, minor), Ino: ino}
}

// The test world: the volume's device /dev/loop3 (7:3) and its read-only
// device /dev/loop5 (7:5), another volume's /dev/loop4 (7:4), and a device
// of another name with the same base name, /dev/mapper/loop3 (253:0).
var world = files{
	"/dev/loop3":        blockDev(7, 3),
	"/dev/loop4":        blockDev(7, 4),
	"/dev/loop5":        blockDev(7, 5),
	"/dev/mapper/loop3": blockDev(253, 0),
}

const (
	staging = "/k/staging"
	target  = "/k/target"
	target2 = "/k/target2"
)

// Mount table entries, as /proc/self/mountinfo shows them.
var (
	stagingMount  = mount.Info{ID: 100, Major: 7, Minor: 3, Root: "/", Mountpoint: staging, Options: "rw,nosuid,nodev,relatime", FSType: "ext4", Source: "/dev/loop3"}
	publishBind   = mount.Info{ID: 101, Major: 7, Minor: 3, Root: "/", Mountpoint: target, Options: "rw,nosuid,nodev,relatime", FSType: "ext4", Source: "/dev/loop3"}
	publishBindRO = mount.Info{ID: 102, Major: 7, Minor: 3, Root: "/", Mountpoint: target, Options: "ro,nosuid,nodev,relatime", FSType: "ext4", Source: "/dev/loop3"}
	publishBind2  = mount.Info{ID: 103, Major: 7, Minor: 3, Root: "/", Mountpoint: target2, Options: "rw,nosuid,nodev,relatime", FSType: "ext4", Source: "/dev/loop3"}
	subdirBind    = mount.Info{ID: 104, Major: 7, Minor: 3, Root: "/sub", Mountpoint: target, Options: "rw,relatime", FSType: "ext4", Source: "/dev/loop3"}
	otherVolume   = mount.Info{ID: 105, Major: 7, Minor: 4, Root: "/", Mountpoint: target, Options: "rw,nosuid,nodev,relatime", FSType: "ext4", Source: "/dev/loop4"}
	foreignTmpfs  = mount.Info{ID: 106, Major: 0, Minor: 55, Root: "/", Mountpoint: target, Options: "rw,relatime", FSType: "tmpfs", Source: "tmpfs"}
	// A tmpfs whose source is any string its maker chose: here the
	// volume's device.
	impostorTmpfs = mount.Info{ID: 107, Major: 0, Minor: 56, Root: "/", Mountpoint: staging, Options: "rw,nosuid,nodev,relatime", FSType: "tmpfs", Source: "/dev/loop3"}
	// btrfs shows an anonymous device number, never its device's.
	btrfsStaging = mount.Info{ID: 108, Major: 0, Minor: 40, Root: "/", Mountpoint: staging, Options: "rw,nosuid,nodev,relatime", FSType: "btrfs", Source: "/dev/loop3"}
	// The device reached by another name: same number, other source.
	byIDStaging = mount.Info{ID: 109, Major: 7, Minor: 3, Root: "/", Mountpoint: staging, Options: "rw,nosuid,nodev,relatime", FSType: "ext4", Source: "/dev/disk/by-id/x"}
	roDevMount  = mount.Info{ID: 110, Major: 7, Minor: 5, Root: "/", Mountpoint: "/elsewhere", Options: "ro,relatime", FSType: "ext4", Source: "/dev/loop5"}
	// Binds of device nodes: a devtmpfs mount rooted at the node's name.
	loop3Bind     = mount.Info{ID: 111, Major: 0, Minor: 5, Root: "/loop3", Mountpoint: target, Options: "rw,nosuid,relatime", FSType: "devtmpfs", Source: "udev"}
	loop5Bind     = mount.Info{ID: 112, Major: 0, Minor: 5, Root: "/loop5", Mountpoint: target2, Options: "ro,nosuid,relatime", FSType: "devtmpfs", Source: "udev"}
	loop30Bind    = mount.Info{ID: 113, Major: 0, Minor: 5, Root: "/loop30", Mountpoint: target2, Options: "rw,nosuid,relatime", FSType: "devtmpfs", Source: "udev"}
	mapperBind    = mount.Info{ID: 114, Major: 0, Minor: 5, Root: "/mapper/loop3", Mountpoint: target2, Options: "rw,nosuid,relatime", FSType: "devtmpfs", Source: "udev"}
	tmpfsFileBind = mount.Info{ID: 115, Major: 0, Minor: 57, Root: "/loop3", Mountpoint: target2, Options: "rw,relatime", FSType: "tmpfs", Source: "tmpfs"}
	devMount      = mount.Info{ID: 116, Major: 0, Minor: 5, Root: "/", Mountpoint: "/dev", Options: "rw,nosuid,relatime", FSType: "devtmpfs", Source: "udev"}
)

func with(f files, more files) files {
	out := files{}
	for k, v := range f {
		out[k] = v
	}
	for k, v := range more {
		out[k] = v
	}
	return out
}

func TestOwns(t *testing.T) {
	fsVolume := pool.Attachment{Device: "/dev/loop3"}
	blockVolume := pool.Attachment{Device: "/dev/loop3", ReadOnly: []string{"/dev/loop5"}}
	dirVolume := pool.Attachment{Dir: "/pool/volumes/pv-a"}
	dirs := files{"/pool/volumes/pv-a": dirOn(8, 1, 42), "/pool/volumes/pv-b": dirOn(8, 1, 43)}
	for name, tc := range map[string]struct {
		att      pool.Attachment
		detached bool
		m        *mount.Info
		path     string
		block    bool
		files    files
		own      bool
		roDevice string
		err      bool
	}{
		// A filesystem on the volume's device.
		"the volume's staging mount":                     {att: fsVolume, m: &stagingMount, path: staging, own: true},
		"a publish bind of the staging mount":            {att: fsVolume, m: &publishBind, path: target, own: true},
		"btrfs: anonymous number, source is the device":  {att: fsVolume, m: &btrfsStaging, path: staging, own: true},
		"the device under another name, same number":     {att: fsVolume, m: &byIDStaging, path: staging, own: true},
		"a bind of a directory inside the volume":        {att: fsVolume, m: &subdirBind, path: target},
		"another volume's filesystem":                    {att: fsVolume, m: &otherVolume, path: target},
		"a foreign tmpfs":                                {att: fsVolume, m: &foreignTmpfs, path: target},
		"the volume not attached":                        {att: fsVolume, detached: true, m: &stagingMount, path: staging},
		"nothing mounted":                                {att: fsVolume, path: staging},
		"device node gone, source another name":          {att: fsVolume, m: &byIDStaging, path: staging, files: files{"/dev/loop3": {}}, err: true},
		"a device of the same base name mounted there":   {att: fsVolume, m: &mount.Info{Major: 253, Minor: 0, Root: "/", Mountpoint: staging, FSType: "ext4", Source: "/dev/mapper/loop3"}, path: staging},
		"a tmpfs whose source names the volume's device": {att: fsVolume, m: &impostorTmpfs, path: staging},

		// A block volume's binds: what the target's node is.
		"a bind of the volume's device":            {att: blockVolume, m: &loop3Bind, path: target, block: true, files: files{target: blockDev(7, 3)}, own: true},
		"a bind of its read-only device":           {att: blockVolume, m: &loop5Bind, path: target, block: true, files: files{target: blockDev(7, 5)}, own: true, roDevice: "/dev/loop5"},
		"a bind of another volume's device":        {att: blockVolume, m: &loop3Bind, path: target, block: true, files: files{target: blockDev(7, 4)}},
		"a bind of a same-named device elsewhere":  {att: blockVolume, m: &mapperBind, path: target, block: true, files: files{target: blockDev(253, 0)}},
		"a character device of the same number":    {att: blockVolume, m: &loop3Bind, path: target, block: true, files: files{target: charDev(7, 3)}},
		"a directory at a block target":            {att: blockVolume, m: &foreignTmpfs, path: target, block: true, files: files{target: dirOn(0, 55, 1)}},
		"the target gone":                          {att: blockVolume, m: &loop3Bind, path: target, block: true, err: true},
		"a block volume not attached":              {att: blockVolume, detached: true, m: &loop3Bind, path: target, block: true, files: files{target: blockDev(7, 3)}},
		"its device node gone: nothing to compare": {att: blockVolume, m: &loop3Bind, path: target, block: true, files: files{target: blockDev(7, 3), "/dev/loop3": {}, "/dev/loop5": {}}},

		// A volume that is a directory (no device): a bind of it.
		"a bind of the volume's directory":          {att: dirVolume, m: &foreignTmpfs, path: staging, files: with(dirs, files{staging: dirOn(8, 1, 42)}), own: true},
		"a bind of another volume's directory":      {att: dirVolume, m: &foreignTmpfs, path: staging, files: with(dirs, files{staging: dirOn(8, 1, 43)})},
		"the same inode number on another fs":       {att: dirVolume, m: &foreignTmpfs, path: staging, files: with(dirs, files{staging: dirOn(0, 55, 42)})},
		"the volume's directory gone":               {att: dirVolume, m: &foreignTmpfs, path: staging, files: files{staging: dirOn(8, 1, 42)}, err: true},
		"an attachment with neither device nor dir": {att: pool.Attachment{}, m: &stagingMount, path: staging},
	} {
		t.Run(name, func(t *testing.T) {
			f := with(world, nil)
			for k, v := range tc.files {
				if v == (unix.Stat_t{}) {
					delete(f, k)
				} else {
					f[k] = v
				}
			}
			own, ro, err := fakeHost(f, nil).owns(tc.att, !tc.detached, tc.m, tc.path, tc.block)
			if (err != nil) != tc.err || own != tc.own || ro != tc.roDevice {
				t.Errorf("owns = %t, %q, %v; want %t, %q (error %t)", own, ro, err, tc.own, tc.roDevice, tc.err)
			}
		})
	}
}

func TestBindsDevice(t *testing.T) {
	for name, tc := range map[string]struct {
		m    mount.Info
		dev  string
		want bool
	}{
		"a bind of the node":                        {loop3Bind, "/dev/loop3", true},
		"a bind of another node":                    {loop3Bind, "/dev/loop4", false},
		"a node whose name starts with the same":    {loop30Bind, "/dev/loop3", false},
		"a node of the same name in a subdirectory": {mapperBind, "/dev/loop3", false},
		"a file of the same name on a tmpfs":        {tmpfsFileBind, "/dev/loop3", false},
		"the /dev mount itself":                     {devMount, "/dev/loop3", false},
		"the filesystem on the device":              {stagingMount, "/dev/loop3", false},
		// plinth's devices are all nodes directly in /dev (loop devices,
		// whole disks): the base name is the node's path in devtmpfs.
		"a device in a subdirectory is compared by its base name": {loop3Bind, "/dev/mapper/loop3", true},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tc.m.BindsDevice(tc.dev); got != tc.want {
				t.Errorf("%+v BindsDevice(%q) = %t, want %t", tc.m, tc.dev, got, tc.want)
			}
		})
	}
}

// Unstage refuses (ErrInUse: the CSI boundary answers FAILED_PRECONDITION)
// while any device of the volume is mounted anywhere but by its own
// staging mount; the second check, after the staging mount is gone, counts
// that one too.
func TestNotMountedElsewhere(t *testing.T) {
	all := pool.Attachment{Device: "/dev/loop3", ReadOnly: []string{"/dev/loop5"}}
	own := pool.Attachment{Device: "/dev/loop3"}
	for name, tc := range map[string]struct {
		table      []mount.Info
		detached   bool
		own        pool.Attachment
		staging    string
		files      files
		in         []string // where it is still mounted; nil: OK
		unreadable bool
	}{
		"only its own staging mount":                 {table: []mount.Info{devMount, stagingMount}, own: own, staging: staging},
		"its staging mount stacked twice":            {table: []mount.Info{stagingMount, stagingMount}, own: own, staging: staging},
		"a publish bind left":                        {table: []mount.Info{stagingMount, publishBind}, own: own, staging: staging, in: []string{target}},
		"a bind of a directory inside it":            {table: []mount.Info{stagingMount, subdirBind}, own: own, staging: staging, in: []string{target}},
		"a block publish: the device node bound":     {table: []mount.Info{devMount, loop3Bind}, staging: staging, in: []string{target}},
		"its read-only device bound":                 {table: []mount.Info{loop5Bind}, own: own, staging: staging, in: []string{target2}},
		"its read-only device mounted elsewhere":     {table: []mount.Info{stagingMount, roDevMount}, own: own, staging: staging, in: []string{"/elsewhere"}},
		"other volumes and foreign mounts":           {table: []mount.Info{stagingMount, otherVolume, foreignTmpfs, loop30Bind, tmpfsFileBind}, own: own, staging: staging},
		"a bind of a same-named device elsewhere":    {table: []mount.Info{stagingMount, mapperBind}, own: own, staging: staging},
		"the second check: the staging mount counts": {table: []mount.Info{stagingMount}, in: []string{staging}},
		"the staging mount at another path":          {table: []mount.Info{byIDStaging, {Major: 7, Minor: 3, Root: "/", Mountpoint: "/k/other", Source: "/dev/loop3", FSType: "ext4"}}, own: own, staging: staging, in: []string{"/k/other"}},
		"not attached: nothing to ask":               {table: []mount.Info{stagingMount, publishBind}, detached: true, own: own, staging: staging},
		"device nodes gone: their mounts unseen":     {table: []mount.Info{stagingMount, publishBind}, own: own, staging: staging, files: files{"/dev/loop3": {}, "/dev/loop5": {}}},
		"the mount table unreadable":                 {own: own, staging: staging, unreadable: true},
		"an impostor at the staging path, a publish": {table: []mount.Info{impostorTmpfs, publishBind}, own: own, staging: staging, in: []string{staging, target}},
		"only an impostor at the staging path":       {table: []mount.Info{impostorTmpfs}, own: own, staging: staging, in: []string{staging}},
	} {
		t.Run(name, func(t *testing.T) {
			f := with(world, nil)
			for k := range tc.files {
				delete(f, k)
			}
			h := fakeHost(f, tc.table)
			if tc.unreadable {
				h.mounts = func() ([]mount.Info, error) { return nil, os.ErrPermission }
			}
			err := h.notMountedElsewhere("pv-a", all, !tc.detached, tc.own, tc.staging)
			switch {
			case tc.unreadable:
				if err == nil || errors.Is(err, pool.ErrInUse) {
					t.Errorf("with the table unreadable: %v, want its error", err)
				}
			case tc.in == nil:
				if err != nil {
					t.Errorf("notMountedElsewhere = %v, want nil", err)
				}
			default:
				want := "volume pv-a is still mounted at " + strings.Join(tc.in, ", ")
				if !errors.Is(err, pool.ErrInUse) || err.Error() != pool.ErrInUse.Error()+": "+want {
					t.Errorf("notMountedElsewhere = %v, want ErrInUse: %s", err, want)
				}
			}
		})
	}
}

// publishedAt is what Unstage (still published: refused) and a
// single-writer publish (published at another target: FAILED_PRECONDITION)
// read of the mount table.
func TestPublishedAt(t *testing.T) {
	fsVolume := pool.Attachment{Device: "/dev/loop3"}
	blockVolume := pool.Attachment{Device: "/dev/loop3", ReadOnly: []string{"/dev/loop5"}}
	for name, tc := range map[string]struct {
		att   pool.Attachment
		block bool
		table []mount.Info
		want  []string
	}{
		"staged, published nowhere":                 {att: fsVolume, table: []mount.Info{devMount, stagingMount}},
		"published at two targets":                  {att: fsVolume, table: []mount.Info{stagingMount, publishBind, publishBind2}, want: []string{target, target2}},
		"a bind of a directory inside it":           {att: fsVolume, table: []mount.Info{stagingMount, subdirBind}},
		"the staging mount stacked":                 {att: fsVolume, table: []mount.Info{stagingMount, stagingMount, publishBind}, want: []string{target}},
		"another volume published":                  {att: fsVolume, table: []mount.Info{stagingMount, otherVolume}},
		"not staged: nothing at the staging path":   {att: fsVolume, table: []mount.Info{publishBind}},
		"a foreign mount at the staging path":       {att: fsVolume, table: []mount.Info{{Major: 0, Minor: 55, Root: "/", Mountpoint: staging, FSType: "tmpfs", Source: "tmpfs"}, foreignTmpfs}},
		"btrfs: binds share its anonymous number":   {att: fsVolume, table: []mount.Info{btrfsStaging, {Major: 0, Minor: 40, Root: "/", Mountpoint: target, FSType: "btrfs", Source: "/dev/loop3"}}, want: []string{target}},
		"block: its device and read-only device":    {att: blockVolume, block: true, table: []mount.Info{devMount, loop3Bind, loop5Bind}, want: []string{target, target2}},
		"block: a same-named device elsewhere":      {att: blockVolume, block: true, table: []mount.Info{mapperBind, loop30Bind}},
		"block: a file named like the node":         {att: blockVolume, block: true, table: []mount.Info{tmpfsFileBind}},
		"block: a filesystem on the device is none": {att: blockVolume, block: true, table: []mount.Info{stagingMount, publishBind}},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := fakeHost(world, tc.table).publishedAt(tc.att, staging, tc.block)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("publishedAt = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// A NodeStageVolume retry at a path that holds a mount: the CSI spec asks
// OK when the volume is staged there as asked, ALREADY_EXISTS (ErrExists)
// when it is staged there incompatibly, and plinth answers ALREADY_EXISTS
// too for a mount that is not the volume's, left untouched.
func TestStagedAlready(t *testing.T) {
	att := pool.Attachment{Device: "/dev/loop3"}
	noexec := stagingMount
	noexec.Options = "rw,nosuid,nodev,noexec,relatime"
	for name, tc := range map[string]struct {
		m      mount.Info
		flags  []string
		exists bool
	}{
		"staged as asked": {m: stagingMount},
		"staged as asked, a filesystem option asked":  {m: stagingMount, flags: []string{"discard"}},
		"asked noexec, staged without":                {m: stagingMount, flags: []string{"noexec"}, exists: true},
		"staged noexec, asked without":                {m: noexec, exists: true},
		"staged noexec, asked noexec":                 {m: noexec, flags: []string{"noexec"}},
		"asked read-only, staged read-write":          {m: stagingMount, flags: []string{"ro"}, exists: true},
		"asked noatime, staged relatime":              {m: stagingMount, flags: []string{"noatime"}, exists: true},
		"asked relatime, staged relatime":             {m: stagingMount, flags: []string{"relatime"}},
		"another volume's filesystem there":           {m: otherVolume, exists: true},
		"a foreign tmpfs there":                       {m: foreignTmpfs, exists: true},
		"a bind of a directory of the volume there":   {m: subdirBind, exists: true},
		"btrfs staged as asked (anonymous device no)": {m: btrfsStaging},
	} {
		t.Run(name, func(t *testing.T) {
			p := &Mounts{host: fakeHost(world, nil)} // no state dir: nothing recorded
			err := p.stagedAlready("pv-a", staging, Access{FsType: "ext4", MountFlags: tc.flags}, site{mount: &tc.m}, att, true)
			if tc.exists && !errors.Is(err, pool.ErrExists) || !tc.exists && err != nil {
				t.Errorf("stagedAlready = %v, want ErrExists %t", err, tc.exists)
			}
		})
	}
}

// A NodePublishVolume retry at a target that holds a mount: OK when the
// volume is published there as asked; ALREADY_EXISTS (the CSI spec's code
// for a volume published at the target with an incompatible capability or
// read-only flag) when read-only or the mount flags differ, or the mount
// is not the volume's.
func TestPublishedAlready(t *testing.T) {
	fsVolume := pool.Attachment{Device: "/dev/loop3"}
	blockVolume := pool.Attachment{Device: "/dev/loop3", ReadOnly: []string{"/dev/loop5"}}
	for name, tc := range map[string]struct {
		att      pool.Attachment
		m        mount.Info
		node     unix.Stat_t // what the target is, for block
		a        Access
		exists   bool
		pathUsed bool
	}{
		"read-write, asked read-write":          {att: fsVolume, m: publishBind},
		"read-write, asked read-only":           {att: fsVolume, m: publishBind, a: Access{ReadOnly: true}, exists: true},
		"read-only, asked read-write":           {att: fsVolume, m: publishBindRO, exists: true},
		"read-only, asked read-only":            {att: fsVolume, m: publishBindRO, a: Access{ReadOnly: true}},
		"read-write, asked with the ro flag":    {att: fsVolume, m: publishBind, a: Access{MountFlags: []string{"ro"}}, exists: true},
		"asked noexec, published without":       {att: fsVolume, m: publishBind, a: Access{MountFlags: []string{"noexec"}}, exists: true},
		"another volume at the target":          {att: fsVolume, m: otherVolume, exists: true},
		"a foreign tmpfs at the target":         {att: fsVolume, m: foreignTmpfs, exists: true},
		"a directory of the volume bound there": {att: fsVolume, m: subdirBind, exists: true},

		"block: its device, asked read-write":               {att: blockVolume, m: loop3Bind, node: blockDev(7, 3), a: Access{Block: true}},
		"block: its device, asked read-only":                {att: blockVolume, m: loop3Bind, node: blockDev(7, 3), a: Access{Block: true, ReadOnly: true}, exists: true},
		"block: its read-only device, asked read-only":      {att: blockVolume, m: loop5Bind, node: blockDev(7, 5), a: Access{Block: true, ReadOnly: true}},
		"block: its read-only device, asked read-write":     {att: blockVolume, m: loop5Bind, node: blockDev(7, 5), a: Access{Block: true}, exists: true},
		"block: another volume's device":                    {att: blockVolume, m: loop3Bind, node: blockDev(7, 4), a: Access{Block: true}, exists: true},
		"block: a same-named device from /dev/mapper":       {att: blockVolume, m: mapperBind, node: blockDev(253, 0), a: Access{Block: true}, exists: true},
		"block: mount flags are not compared for a device":  {att: blockVolume, m: loop3Bind, node: blockDev(7, 3), a: Access{Block: true, MountFlags: []string{"noexec"}}},
		"block: a char device of the volume's number there": {att: blockVolume, m: loop3Bind, node: charDev(7, 3), a: Access{Block: true}, exists: true},
	} {
		t.Run(name, func(t *testing.T) {
			f := with(world, nil)
			if tc.node != (unix.Stat_t{}) {
				f[target] = tc.node
			}
			err := fakeHost(f, nil).publishedAlready("pv-a", staging, target, tc.a, site{mount: &tc.m}, tc.att, true)
			if tc.exists && !errors.Is(err, pool.ErrExists) || !tc.exists && err != nil {
				t.Errorf("publishedAlready = %v, want ErrExists %t", err, tc.exists)
			}
		})
	}
}

// DeviceBound keeps a loop number from being given to another volume
// while a consumer holds it: named by a publish record, or bound in the
// mount table; an unreadable table answers yes.
func TestDeviceBound(t *testing.T) {
	for name, tc := range map[string]struct {
		records    []targetRecord
		table      []mount.Info
		unreadable bool
		want       bool
	}{
		"nothing anywhere":                          {table: []mount.Info{devMount}},
		"a publish record bound it":                 {records: []targetRecord{{VolumeID: "pv-a", Target: target, Bound: "/dev/loop3"}}, want: true},
		"a record's read-only device":               {records: []targetRecord{{VolumeID: "pv-a", Target: target, Device: "/dev/loop3", Bound: "/dev/loop3"}}, want: true},
		"a record of another device":                {records: []targetRecord{{VolumeID: "pv-a", Target: target, Bound: "/dev/loop30"}}},
		"a filesystem publish record":               {records: []targetRecord{{VolumeID: "pv-a", Target: target, Created: "dir"}}},
		"bound in the table, no record (freed)":     {table: []mount.Info{loop3Bind}, want: true},
		"a bind of loop30":                          {table: []mount.Info{loop30Bind}},
		"a same-named device from /dev/mapper":      {table: []mount.Info{mapperBind}},
		"a file named like it on a tmpfs":           {table: []mount.Info{tmpfsFileBind}},
		"a filesystem on it, not a bind":            {table: []mount.Info{stagingMount}},
		"the mount table unreadable: assumed bound": {unreadable: true, want: true},
	} {
		t.Run(name, func(t *testing.T) {
			state := t.TempDir()
			tr := targetRecords{dir: filepath.Join(state, "targets")}
			for _, r := range tc.records {
				if err := tr.put(r); err != nil {
					t.Fatal(err)
				}
			}
			table := func() ([]mount.Info, error) { return tc.table, nil }
			if tc.unreadable {
				table = func() ([]mount.Info, error) { return nil, os.ErrPermission }
			}
			if got := deviceBound(state, "/dev/loop3", table); got != tc.want {
				t.Errorf("deviceBound = %t, want %t", got, tc.want)
			}
		})
	}
}
