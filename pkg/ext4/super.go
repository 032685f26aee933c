package ext4

import (
	"encoding/binary"
	"hash/crc32"
)

// The superblock: 1024 bytes, the primary one 1024 bytes into the
// filesystem, a backup at the start of some block groups' first block.
const (
	SuperOffset = 1024
	SuperSize   = 1024

	Magic = 0xEF53
	// MaxLogBlockSize is the largest valid s_log_block_size: blocks of
	// 2^(10+6) bytes (64 KiB).
	MaxLogBlockSize = 6
)

// Byte offsets of the superblock's fields.
const (
	OffBlocksCount     = 0x04
	OffFirstDataBlock  = 0x14
	OffLogBlockSize    = 0x18
	OffBlocksPerGroup  = 0x20
	OffMagic           = 0x38
	OffFeatureCompat   = 0x5C
	OffFeatureIncompat = 0x60
	OffFeatureRoCompat = 0x64
	OffUUID            = 0x68
	OffHashSeed        = 0xEC
	OffBlocksCountHi   = 0x150
	OffBackupBgs       = 0x24C
	OffChecksum        = 0x3FC
)

// Feature flags.
const (
	CompatSparseSuper2   = 0x200
	RoCompatSparseSuper  = 0x1
	RoCompatMetadataCsum = 0x400
	Incompat64Bit        = 0x80
	IncompatCsumSeed     = 0x2000
)

var le = binary.LittleEndian

// Super is one superblock (a primary or a backup) as read from disk.
type Super []byte

// Valid reports whether s is SuperSize bytes with the ext2/3/4 magic number.
func (s Super) Valid() bool {
	return len(s) == SuperSize && le.Uint16(s[OffMagic:]) == Magic
}

// Blocks is the filesystem's block count, with its high half on a 64-bit
// filesystem.
func (s Super) Blocks() uint64 {
	n := uint64(le.Uint32(s[OffBlocksCount:]))
	if s.Incompat()&Incompat64Bit != 0 {
		n |= uint64(le.Uint32(s[OffBlocksCountHi:])) << 32
	}
	return n
}

// LogBlockSize is s_log_block_size: blocks are 2^(10+LogBlockSize) bytes.
// Valid only up to MaxLogBlockSize.
func (s Super) LogBlockSize() uint32 { return le.Uint32(s[OffLogBlockSize:]) }

// FirstDataBlock is the block the first block group starts at.
func (s Super) FirstDataBlock() uint64 { return uint64(le.Uint32(s[OffFirstDataBlock:])) }

// BlocksPerGroup is the number of blocks in a block group.
func (s Super) BlocksPerGroup() uint64 { return uint64(le.Uint32(s[OffBlocksPerGroup:])) }

// BackupGroups are the two block groups that hold backups under
// sparse_super2.
func (s Super) BackupGroups() [2]uint64 {
	return [2]uint64{uint64(le.Uint32(s[OffBackupBgs:])), uint64(le.Uint32(s[OffBackupBgs+4:]))}
}

// Compat, Incompat and RoCompat are the feature flag words.
func (s Super) Compat() uint32   { return le.Uint32(s[OffFeatureCompat:]) }
func (s Super) Incompat() uint32 { return le.Uint32(s[OffFeatureIncompat:]) }
func (s Super) RoCompat() uint32 { return le.Uint32(s[OffFeatureRoCompat:]) }

// StoredChecksum is the checksum the superblock carries.
func (s Super) StoredChecksum() uint32 { return le.Uint32(s[OffChecksum:]) }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the superblock's crc32c as ext4 computes it (the kernel's
// crc32c seeded with ~0, without the final inversion).
func (s Super) Checksum() uint32 {
	return ^crc32.Checksum(s[:OffChecksum], castagnoli)
}

// SetIdentity writes uuid and hashSeed into s and stores its checksum
// computed again.
func (s Super) SetIdentity(uuid, hashSeed [16]byte) {
	copy(s[OffUUID:], uuid[:])
	copy(s[OffHashSeed:], hashSeed[:])
	le.PutUint32(s[OffChecksum:], s.Checksum())
}
