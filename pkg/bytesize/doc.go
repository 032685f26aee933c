// Package bytesize prints sizes in bytes the way a person reads them
// (512MiB, 67.7GiB), for messages, events and tables.
package bytesize
