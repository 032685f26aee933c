// Package durable writes the files plinth keeps on disk so that a crash
// leaves either the old content or the new: temp file → fsync → rename →
// fsync of the directory (WriteFile, WriteRecord, Remove), the
// JSON records with a schema version read back by ReadRecord, and boot
// records (WriteBootRecord, NewBoot): records of kernel state that no
// reboot keeps, written without an fsync and dropped unread in a new boot.
package durable
