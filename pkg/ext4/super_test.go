package ext4

import (
	"encoding/binary"
	"testing"
)

// super is a superblock with the given block count words, log block size
// and incompat flags.
func super(lo, hi, log, incompat uint32) Super {
	s := make(Super, SuperSize)
	binary.LittleEndian.PutUint16(s[OffMagic:], Magic)
	binary.LittleEndian.PutUint32(s[OffBlocksCount:], lo)
	binary.LittleEndian.PutUint32(s[OffBlocksCountHi:], hi)
	binary.LittleEndian.PutUint32(s[OffLogBlockSize:], log)
	binary.LittleEndian.PutUint32(s[OffFeatureIncompat:], incompat)
	return s
}

func TestSuper(t *testing.T) {
	tests := map[string]struct {
		s          Super
		valid      bool
		blocks     uint64
		logBlockSz uint32
	}{
		"32-bit: the high half is ignored": {super(1000, 7, 2, 0), true, 1000, 2},
		"64-bit: the high half counts":     {super(1000, 7, 2, Incompat64Bit), true, 7<<32 | 1000, 2},
		"no magic":                         {make(Super, SuperSize), false, 0, 0},
		"short":                            {super(1, 0, 0, 0)[:SuperSize-1], false, 1, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.s.Valid(); got != tc.valid {
				t.Fatalf("Valid = %v, want %v", got, tc.valid)
			}
			if !tc.valid {
				return
			}
			if got := tc.s.Blocks(); got != tc.blocks {
				t.Errorf("Blocks = %d, want %d", got, tc.blocks)
			}
			if got := tc.s.LogBlockSize(); got != tc.logBlockSz {
				t.Errorf("LogBlockSize = %d, want %d", got, tc.logBlockSz)
			}
		})
	}
}

// SetIdentity writes the UUID and hash seed where tune2fs reads them and
// leaves a superblock whose stored checksum is its checksum.
func TestSetIdentity(t *testing.T) {
	s := super(1000, 0, 2, IncompatCsumSeed)
	uuid := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	seed := [16]byte{0xaa, 15: 0xbb}
	s.SetIdentity(uuid, seed)
	if [16]byte(s[OffUUID:OffUUID+16]) != uuid || [16]byte(s[OffHashSeed:OffHashSeed+16]) != seed {
		t.Errorf("uuid %x seed %x", s[OffUUID:OffUUID+16], s[OffHashSeed:OffHashSeed+16])
	}
	if s.StoredChecksum() != s.Checksum() || s.Checksum() == 0 {
		t.Errorf("stored checksum %#x, computed %#x", s.StoredChecksum(), s.Checksum())
	}
	s[0]++
	if s.StoredChecksum() == s.Checksum() {
		t.Error("a changed byte leaves the checksum as it was")
	}
}
