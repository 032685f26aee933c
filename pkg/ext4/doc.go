// Package ext4 is the layout of the ext2/3/4 superblock and what plinth
// reads from it: its magic number, size (block count and block size),
// geometry and features, and its checksum. pkg/mount reads a filesystem's
// size before growing it offline; pkg/fsimage reads a template's geometry
// and writes a copy's identity. It works on bytes already read and opens
// no device.
package ext4
