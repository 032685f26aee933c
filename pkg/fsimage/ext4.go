package fsimage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The ext4 superblock: 1024 bytes, the primary one 1024 bytes into the
// filesystem, a backup at the start of some block groups' first block.
const (
	ext4SuperOffset = 1024
	ext4SuperSize   = 1024

	offBlocksCount     = 0x04
	offFirstDataBlock  = 0x14
	offLogBlockSize    = 0x18
	offBlocksPerGroup  = 0x20
	offMagic           = 0x38
	offFeatureCompat   = 0x5C
	offFeatureIncompat = 0x60
	offFeatureRoCompat = 0x64
	offUUID            = 0x68
	offHashSeed        = 0xEC
	offBlocksCountHi   = 0x150
	offBackupBgs       = 0x24C
	offChecksum        = 0x3FC

	ext4Magic = 0xEF53

	compatSparseSuper2   = 0x200
	roCompatSparseSuper  = 0x1
	roCompatMetadataCsum = 0x400
	incompat64Bit        = 0x80
	incompatCsumSeed     = 0x2000
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

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

// ext4Checksum is the superblock's crc32c as ext4 stores it (the
// kernel's crc32c seeded with ~0, without the final inversion).
func ext4Checksum(sb []byte) uint32 {
	return ^crc32.Checksum(sb[:offChecksum], castagnoli)
}

// parseExt4 checks the primary superblock sb (1024 bytes) and reads its
// geometry. It refuses a filesystem whose identity cannot be changed by
// rewriting its superblocks alone.
func parseExt4(sb []byte) (ext4Geometry, error) {
	le := binary.LittleEndian
	if len(sb) != ext4SuperSize || le.Uint16(sb[offMagic:]) != ext4Magic {
		return ext4Geometry{}, fmt.Errorf("%w: no ext4 superblock", errNotReidentifiable)
	}
	incompat, roCompat, compat := le.Uint32(sb[offFeatureIncompat:]), le.Uint32(sb[offFeatureRoCompat:]), le.Uint32(sb[offFeatureCompat:])
	if incompat&incompatCsumSeed == 0 || roCompat&roCompatMetadataCsum == 0 {
		return ext4Geometry{}, fmt.Errorf("%w: metadata_csum_seed and metadata_csum are not both set", errNotReidentifiable)
	}
	if got, want := le.Uint32(sb[offChecksum:]), ext4Checksum(sb); got != want {
		return ext4Geometry{}, fmt.Errorf("%w: superblock checksum %#x, computed %#x", errNotReidentifiable, got, want)
	}
	log := le.Uint32(sb[offLogBlockSize:])
	if log > 6 {
		return ext4Geometry{}, fmt.Errorf("%w: block size 2^(10+%d)", errNotReidentifiable, log)
	}
	g := ext4Geometry{
		blockSize:      1024 << log,
		blocks:         uint64(le.Uint32(sb[offBlocksCount:])),
		firstDataBlock: uint64(le.Uint32(sb[offFirstDataBlock:])),
		blocksPerGroup: uint64(le.Uint32(sb[offBlocksPerGroup:])),
		sparseSuper:    roCompat&roCompatSparseSuper != 0,
		sparseSuper2:   compat&compatSparseSuper2 != 0,
		backupGroups:   [2]uint64{uint64(le.Uint32(sb[offBackupBgs:])), uint64(le.Uint32(sb[offBackupBgs+4:]))},
	}
	if incompat&incompat64Bit != 0 {
		g.blocks |= uint64(le.Uint32(sb[offBlocksCountHi:])) << 32
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
	offs := []int64{ext4SuperOffset}
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
	if len(sb) != ext4SuperSize || binary.LittleEndian.Uint16(sb[offMagic:]) != ext4Magic {
		return fmt.Errorf("%w: a backup superblock is missing", errNotReidentifiable)
	}
	copy(sb[offUUID:], uuid[:])
	copy(sb[offHashSeed:], hashSeed[:])
	binary.LittleEndian.PutUint32(sb[offChecksum:], ext4Checksum(sb))
	return nil
}
