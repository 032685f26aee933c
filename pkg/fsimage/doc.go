// Package fsimage formats a blank volume by copying a filesystem made once
// per filesystem type and size (a template) instead of running mkfs for
// every volume, and gives each copy an identity of its own.
//
// A template is made by mkfs on a sparse file under the node's state root,
// with the options a blank loop device of that size would get (4 KiB
// blocks; for ext4 also metadata_csum_seed, so that the checksums of its
// metadata do not depend on the UUID). Formatting a device then writes the
// template's allocated extents (about 140 KiB for 64 MiB, 660 KiB for
// 1 GiB) onto the device, which must read as zeros, with a new random UUID
// and directory hash seed in every superblock (the primary and each
// backup), whose checksum is computed again; no other byte changes. The
// UUID is written where and as `tune2fs -U` writes it, but tune2fs keeps
// the hash seed and stamps the superblocks' write time (s_wtime), while a
// copy gets a hash seed of its own and keeps the template's write time.
// The block that holds the primary superblock is written last, after an
// fsync of everything else, so that an interrupted copy leaves no
// filesystem a probe would mount (the mount that follows flushes that
// block: ext4 writes its superblock when mounted).
//
// Templates live in one directory (<root>/templates) that plinth reaches
// without following a symlink; a template is copied only if it is a
// regular file there, owned by plinth's user, writable by no one else and
// with one link. Anything else at a template's name (a symlink, a hard
// link, a FIFO, a file of another size or owner) is replaced by a new
// template, never opened through or copied. The temp files of templates a
// killed plinth was making are removed when the cache opens (New); a temp
// file is locked by its maker, so another process's is left alone.
//
// Each write of a copy goes through its own exclusive descriptor that lives
// only while syscall.ForkLock is held (writeExcl): a child forked meanwhile
// by another goroutine never holds the device, so the mount that follows
// the copy never finds it busy.
//
// Only ext4 is made this way; other types return ErrNoTemplate and the
// caller runs mkfs.
package fsimage
