package fsimage

import (
	"errors"
	"fmt"

	"github.com/plinth-dev/plinth/pkg/ext4"
)

// errNotReidentifiable: a filesystem whose metadata checksums would break
// with a new UUID (no metadata_csum_seed), or not an ext4 at all.
var errNotReidentifiable = errors.New("ext4 superblock cannot take a new identity")

// ext4Geometry is what locating the superblocks needs.
type ext4Geometry struct {
	blockSize      int64
	blocks         uint64
	firstDataBlock uint64
	blocksPerGroup uint64
	sparseSuper    bool
	sparseSuper2   bool
	backupGroups   [2]uint64
}

// parseExt4 checks the primary superblock sb (1024 bytes) and reads its
// geometry. It refuses a filesystem whose identity cannot be changed by
// rewriting its superblocks alone.
func parseExt4(sb []byte) (ext4Geometry, error) {
	s := ext4.Super(sb)
	if !s.Valid() {
		return ext4Geometry{}, fmt.Errorf("%w: no ext4 superblock", errNotReidentifiable)
	}
	incompat, roCompat, compat := s.Incompat(), s.RoCompat(), s.Compat()
	if incompat&ext4.IncompatCsumSeed == 0 || roCompat&ext4.RoCompatMetadataCsum == 0 {
		return ext4Geometry{}, fmt.Errorf("%w: metadata_csum_seed and metadata_csum are not both set", errNotReidentifiable)
	}
	if got, want := s.StoredChecksum(), s.Checksum(); got != want {
		return ext4Geometry{}, fmt.Errorf("%w: superblock checksum %#x, computed %#x", errNotReidentifiable, got, want)
	}
	log := s.LogBlockSize()
	if log > ext4.MaxLogBlockSize {
		return ext4Geometry{}, fmt.Errorf("%w: block size 2^(10+%d)", errNotReidentifiable, log)
	}
	g := ext4Geometry{
		blockSize:      1024 << log,
		blocks:         s.Blocks(),
		firstDataBlock: s.FirstDataBlock(),
		blocksPerGroup: s.BlocksPerGroup(),
		sparseSuper:    roCompat&ext4.RoCompatSparseSuper != 0,
		sparseSuper2:   compat&ext4.CompatSparseSuper2 != 0,
		backupGroups:   s.BackupGroups(),
	}
	if g.blocksPerGroup == 0 || g.blocks <= g.firstDataBlock {
		return ext4Geometry{}, fmt.Errorf("%w: %d blocks, %d per group", errNotReidentifiable, g.blocks, g.blocksPerGroup)
	}
	return g, nil
}

// hasSuper reports whether block group n holds a superblock (e2fsprogs'
// ext2fs_bg_has_super).
func (g ext4Geometry) hasSuper(n uint64) bool {
	switch {
	case n == 0:
		return true
	case g.sparseSuper2:
		return n == g.backupGroups[0] || n == g.backupGroups[1]
	case n <= 1 || !g.sparseSuper:
		return true
	}
	for _, base := range []uint64{3, 5, 7} {
		p := base
		for p < n {
			p *= base
		}
		if p == n {
			return true
		}
	}
	return false
}

// superOffsets are the byte offsets of every superblock: the primary, then
// each backup.
func (g ext4Geometry) superOffsets() []int64 {
	offs := []int64{ext4.SuperOffset}
	groups := (g.blocks - g.firstDataBlock + g.blocksPerGroup - 1) / g.blocksPerGroup
	for n := uint64(1); n < groups; n++ {
		if g.hasSuper(n) {
			offs = append(offs, int64(g.firstDataBlock+n*g.blocksPerGroup)*g.blockSize)
		}
	}
	return offs
}

// reidentify writes uuid and hashSeed into one superblock (a primary or a
// backup, 1024 bytes) and recomputes its checksum.
func reidentify(sb []byte, uuid, hashSeed [16]byte) error {
	if !ext4.Super(sb).Valid() {
		return fmt.Errorf("%w: a backup superblock is missing", errNotReidentifiable)
	}
	ext4.Super(sb).SetIdentity(uuid, hashSeed)
	return nil
}
