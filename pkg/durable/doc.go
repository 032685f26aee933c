// Package durable writes the files plinth keeps on disk so that a crash
// leaves either the old content or the new: temp file → fsync → rename →
// fsync of the directory (WriteFile, Remove); the JSON records, each of a
// Format that carries its version, converts older versions forward when
// it reads them and refuses newer ones (Format.Read, Format.Write); and
// boot records (Format.WriteBoot, NewBoot): records of kernel state that
// no reboot keeps, written without an fsync and dropped unread in a new
// boot.
package durable
