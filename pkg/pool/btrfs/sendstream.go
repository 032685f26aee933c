package btrfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// A btrfs send stream comes from another node, and `btrfs receive` runs
// as root: what it does is what the stream says. Chrooted, it cannot reach
// a path outside the import directory, but some commands name other
// subvolumes by UUID, and receive looks those up on the whole filesystem
// and opens them from the filesystem's own mount (a clone source, a
// snapshot's parent). So each stream is read as it passes, command by
// command, and cut at the first one plinth's own senders never make:
//
//   - version 1 of the format only (plinth sends without --proto or
//     --compressed-data): no fallocate, no encoded writes, no verity;
//   - exactly one subvolume, made by the first command: `subvol` for a
//     whole stream, `snapshot` of the sync's base for an incremental one;
//   - a clone only from the stream's own subvolume or the sync's base;
//   - no path that is absolute or has a ".." component (a send names
//     everything relative to its subvolume, by names that cannot be "..");
//   - no trusted.* extended attribute (overlayfs and others trust those);
//   - no write to, or clone from, a FIFO, socket or device node the
//     stream made (opening one would block receive, or reach a device);
//   - written data in all no more than the volume's capacity;
//   - nothing after the end command.

// Commands and attributes of the send stream (btrfs-progs
// common/send-stream.h, kernel fs/btrfs/send.h).
const (
	sendMagic = "btrfs-stream\x00"

	sendCmdSubvol       = 1
	sendCmdSnapshot     = 2
	sendCmdMknod        = 5
	sendCmdMkfifo       = 6
	sendCmdMksock       = 7
	sendCmdRename       = 9
	sendCmdLink         = 10
	sendCmdUnlink       = 11
	sendCmdSetXattr     = 13
	sendCmdWrite        = 15
	sendCmdClone        = 16
	sendCmdEnd          = 21
	sendCmdUpdateExtent = 22 // the last command of version 1

	sendAttrUUID      = 1
	sendAttrPath      = 15
	sendAttrPathTo    = 16
	sendAttrPathLink  = 17
	sendAttrData      = 19
	sendAttrCloneUUID = 20
	sendAttrClonePath = 22
	sendAttrXattrName = 13

	sendCmdHeader = 10 // u32 length, u16 command, u32 crc
	// sendMaxCommand is the largest command a version 1 stream has (the
	// kernel's send buffer, 64 KiB, header included).
	sendMaxCommand = 64 << 10
)

// errBadStream: the stream has what plinth's senders never send.
var errBadStream = errors.New("refused send stream")

// streamCheck reads a send stream as it passes.
type streamCheck struct {
	// parents are the received UUIDs an incremental stream may name as
	// its parent and clone from (a sync's base); none for a whole stream.
	parents [][16]byte
	// dataLeft is how much more data the stream may write.
	dataLeft int64

	buf     []byte // what is read of the header or the current command
	started bool   // the stream header is read
	self    [16]byte
	subvol  bool // the first command made the stream's subvolume
	ended   bool
	// specials are the paths of the FIFOs, sockets and device nodes the
	// stream made, where they are now.
	specials map[string]bool
}

func newStreamCheck(capacity int64, parents ...[16]byte) *streamCheck {
	return &streamCheck{parents: parents, dataLeft: capacity, specials: map[string]bool{}}
}

// feed checks p, the next bytes of the stream.
func (c *streamCheck) feed(p []byte) error {
	for len(p) > 0 {
		if c.ended {
			return fmt.Errorf("%w: bytes after the end command", errBadStream)
		}
		want := len(sendMagic) + 4
		if c.started {
			want = sendCmdHeader
			if len(c.buf) >= sendCmdHeader {
				n := binary.LittleEndian.Uint32(c.buf)
				if n > sendMaxCommand-sendCmdHeader {
					return fmt.Errorf("%w: a command of %d bytes", errBadStream, n)
				}
				want += int(n)
			}
		}
		take := min(want-len(c.buf), len(p))
		c.buf = append(c.buf, p[:take]...)
		p = p[take:]
		if len(c.buf) < want {
			continue
		}
		if !c.started {
			if string(c.buf[:len(sendMagic)]) != sendMagic {
				return fmt.Errorf("%w: not a send stream", errBadStream)
			}
			if v := binary.LittleEndian.Uint32(c.buf[len(sendMagic):]); v != 1 {
				return fmt.Errorf("%w: version %d (plinth sends version 1)", errBadStream, v)
			}
			c.started, c.buf = true, c.buf[:0]
			continue
		}
		if len(c.buf) == sendCmdHeader && binary.LittleEndian.Uint32(c.buf) > 0 {
			continue // the header is read; now the body
		}
		if err := c.command(binary.LittleEndian.Uint16(c.buf[4:]), c.buf[sendCmdHeader:]); err != nil {
			return err
		}
		c.buf = c.buf[:0]
	}
	return nil
}

// finish reports whether the stream ended as a whole one.
func (c *streamCheck) finish() error {
	if !c.ended {
		return fmt.Errorf("%w: the stream ended without its end command", errBadStream)
	}
	return nil
}

// command checks one command.
func (c *streamCheck) command(cmd uint16, body []byte) error {
	attrs, err := sendAttrs(body)
	if err != nil {
		return err
	}
	if cmd == 0 || cmd > sendCmdUpdateExtent {
		return fmt.Errorf("%w: command %d is not of version 1", errBadStream, cmd)
	}
	for _, a := range []uint16{sendAttrPath, sendAttrPathTo, sendAttrClonePath} {
		if v, ok := attrs[a]; ok && !relativeInside(string(v)) {
			return fmt.Errorf("%w: path %q leaves the subvolume", errBadStream, v)
		}
	}
	if !c.subvol {
		switch {
		case cmd == sendCmdSubvol && len(c.parents) == 0:
		case cmd == sendCmdSnapshot && len(c.parents) > 0:
			if !c.parent(attrs[sendAttrCloneUUID]) {
				return fmt.Errorf("%w: the stream's subvolume is a snapshot of one that is not the sync's base", errBadStream)
			}
		case cmd == sendCmdSnapshot:
			return fmt.Errorf("%w: a whole stream's subvolume is a snapshot of another", errBadStream)
		default:
			return fmt.Errorf("%w: the stream does not begin with its subvolume (command %d)", errBadStream, cmd)
		}
		if len(attrs[sendAttrUUID]) != 16 {
			return fmt.Errorf("%w: the stream's subvolume has no UUID", errBadStream)
		}
		copy(c.self[:], attrs[sendAttrUUID])
		c.subvol = true
		return nil
	}
	switch cmd {
	case sendCmdSubvol, sendCmdSnapshot:
		return fmt.Errorf("%w: a second subvolume", errBadStream)
	case sendCmdEnd:
		c.ended = true
	case sendCmdClone:
		src := attrs[sendAttrCloneUUID]
		if !bytes.Equal(src, c.self[:]) && !c.parent(src) {
			return fmt.Errorf("%w: a clone from a subvolume that is neither the stream's nor the sync's base", errBadStream)
		}
		if c.specials[string(attrs[sendAttrPath])] || (bytes.Equal(src, c.self[:]) && c.specials[string(attrs[sendAttrClonePath])]) {
			return fmt.Errorf("%w: a clone to or from a FIFO, socket or device node", errBadStream)
		}
	case sendCmdWrite:
		if c.specials[string(attrs[sendAttrPath])] {
			return fmt.Errorf("%w: a write to a FIFO, socket or device node", errBadStream)
		}
		c.dataLeft -= int64(len(attrs[sendAttrData]))
		if c.dataLeft < 0 {
			return fmt.Errorf("%w: the stream writes more data than the volume holds", errBadStream)
		}
	case sendCmdMknod, sendCmdMkfifo, sendCmdMksock:
		c.specials[string(attrs[sendAttrPath])] = true
	case sendCmdLink:
		if c.specials[string(attrs[sendAttrPathLink])] {
			c.specials[string(attrs[sendAttrPath])] = true
		}
	case sendCmdUnlink:
		delete(c.specials, string(attrs[sendAttrPath]))
	case sendCmdRename:
		from, to := string(attrs[sendAttrPath]), string(attrs[sendAttrPathTo])
		delete(c.specials, to) // what a rename replaces is gone
		var moved []string
		for sp := range c.specials {
			if sp == from || strings.HasPrefix(sp, from+"/") {
				moved = append(moved, sp)
			}
		}
		for _, sp := range moved {
			delete(c.specials, sp)
			c.specials[to+strings.TrimPrefix(sp, from)] = true
		}
	case sendCmdSetXattr:
		if strings.HasPrefix(string(attrs[sendAttrXattrName]), "trusted.") {
			return fmt.Errorf("%w: a trusted.* extended attribute", errBadStream)
		}
	}
	return nil
}

// parent reports whether uuid is one a sync may be based on.
func (c *streamCheck) parent(uuid []byte) bool {
	for _, p := range c.parents {
		if p != ([16]byte{}) && bytes.Equal(uuid, p[:]) {
			return true
		}
	}
	return false
}

// sendAttrs splits a version 1 command's body into its attributes (each
// once).
func sendAttrs(b []byte) (map[uint16][]byte, error) {
	out := map[uint16][]byte{}
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: a cut attribute", errBadStream)
		}
		typ, n := binary.LittleEndian.Uint16(b), int(binary.LittleEndian.Uint16(b[2:]))
		if len(b) < 4+n {
			return nil, fmt.Errorf("%w: attribute %d runs past its command", errBadStream, typ)
		}
		if _, dup := out[typ]; dup {
			return nil, fmt.Errorf("%w: attribute %d twice in a command", errBadStream, typ)
		}
		out[typ] = b[4 : 4+n]
		b = b[4+n:]
	}
	return out, nil
}

// relativeInside reports whether p is a relative path with no ".."
// component.
func relativeInside(p string) bool {
	if strings.HasPrefix(p, "/") {
		return false
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return false
		}
	}
	return true
}
