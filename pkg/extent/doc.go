// Package extent reads where a file holds data, and where two files
// differ, from the filesystem's own maps, without reading the data:
//
//   - Allocated walks a file's data ranges (SEEK_DATA/SEEK_HOLE).
//   - Delta walks the ranges where two files of one filesystem are not
//     backed by the same blocks (FIEMAP): for a reflink copy (xfs with
//     reflink, btrfs) and the file it was copied from, exactly what was
//     written to either since, rounded to the filesystem's block.
//
// It is the one engine behind the final sync of a volume move (only what
// changed since the first copy travels) and changed block tracking. Both
// walk as they go, a batch of extents at a time: memory does not grow with
// the extents a tenant's writes make.
//
// Delta is exact only where the files share blocks; on a filesystem
// without reflinks (ext4) every data range of either file differs, and
// Shared says so, so that a caller can compare those ranges' bytes.
package extent
