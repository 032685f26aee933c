package durable

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Format is one kind of JSON record and its versions: the version this
// plinth writes, and the steps that convert an older record forward when
// it is read. It is the one way plinth's records are read, so that every
// kind follows one rule (docs/architecture.md, "Records and versions"):
//
//   - an older version is converted forward in memory, step by step
//     (Steps[0] takes version 1 to 2, Steps[1] 2 to 3, ...); the file is
//     rewritten only when its owner next writes the record, at Version;
//   - a newer version is refused (ErrNewer, a *NewerError naming the file,
//     its version and Version), and the file is left as it is: Write
//     refuses to replace it too, so the component that owns it stops
//     rather than overwrite what a newer plinth wrote;
//   - a record with no version field is version 1: that is how a record
//     of v0.1.0 would read that lacked it (every kind there has one).
//
// Version is 1 + len(Steps): a new version cannot come without the step
// that converts the one before it. Bumping it also means the release
// before reads no record this plinth writes (each refuses a newer one),
// so a rollback needs a release note, or a plinth that writes the old
// version until no node runs the older one.
type Format struct {
	// Kind names the record in errors: "volume record", "DRA checkpoint".
	Kind string
	// Field is the JSON field that holds the version: "schema", "version".
	Field string
	// Steps convert a record from version i+1 to i+2 (Steps[i]), on the
	// record decoded as a JSON object (numbers as json.Number). None yet.
	Steps []func(rec map[string]any) error
}

// Version is the version this plinth writes, and the newest it reads.
func (f Format) Version() int { return 1 + len(f.Steps) }

// ErrNewer is what every NewerError is (errors.Is): a record written by
// a newer plinth, which this one neither reads nor replaces.
var ErrNewer = errors.New("record of a newer version than this plinth reads")

// NewerError is a record of a version this plinth does not read: a
// number above Newest (Version; Raw as written when it is beyond an int),
// or a version field that is no whole number from 1 up (Bad: a string, a
// fraction, 0, a negative, two fields that differ only in case), which a
// newer plinth may have written too. Either way the record is left as it
// is: nothing reads, replaces or removes it.
type NewerError struct {
	Kind, Path      string
	Version, Newest int
	Raw             string
	Bad             bool
}

func (e *NewerError) Error() string {
	const untouched = "it is left untouched (run that plinth again, or remove the file once what it records is gone)"
	switch {
	case e.Bad:
		return fmt.Sprintf("%s %s has version %s, which is no version this plinth reads (1 to %d): %s", e.Kind, e.Path, e.Raw, e.Newest, untouched)
	case e.Raw != "":
		return fmt.Sprintf("%s %s is version %s, and this plinth reads versions up to %d: a newer plinth wrote it; %s", e.Kind, e.Path, e.Raw, e.Newest, untouched)
	}
	return fmt.Sprintf("%s %s is version %d, and this plinth reads versions up to %d: a newer plinth wrote it; %s",
		e.Kind, e.Path, e.Version, e.Newest, untouched)
}

// Is makes errors.Is(err, ErrNewer) true.
func (e *NewerError) Is(target error) bool { return target == ErrNewer }

// Read loads the record at path into v, converted to Version. A missing
// file is an error that wraps fs.ErrNotExist; a newer version is a
// *NewerError.
func (f Format) Read(path string, v any) error {
	data, err := readRegular(path)
	if err != nil {
		return err
	}
	return f.Decode(path, data, v)
}

// maxRecord bounds what a record read takes into memory.
const maxRecord = 64 << 20

// readRegular reads the regular file at path (following a symlink, as a
// plain read does), refusing anything else without blocking on it: a FIFO
// in place of a record would hang every reader.
func readRegular(path string) ([]byte, error) {
	file, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(file, maxRecord+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxRecord {
		return nil, fmt.Errorf("read %s: larger than %d bytes: no record of plinth's", path, maxRecord)
	}
	return data, nil
}

// Decode is Read of data already read from path (for messages).
func (f Format) Decode(path string, data []byte, v any) error {
	ver, present, err := f.version(path, data)
	if err != nil {
		return err
	}
	// An older record, or one without its version field (version 1),
	// goes through convert, which also writes Version into the field: the
	// struct then carries the version it is now, and writes back as such.
	if ver < f.Version() || !present {
		if data, err = f.convert(path, data, ver); err != nil {
			return err
		}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s %s: %w", f.Kind, path, err)
	}
	return nil
}

// version reads the record's version and checks that this plinth reads
// it; present is false when the record has no version field (or null).
// The field is matched as encoding/json matches a struct's: by name, case
// folded, so that the version checked is the one the struct gets; two
// such keys that differ are refused.
func (f Format) version(path string, data []byte) (ver int, present bool, err error) {
	// The first JSON value only: what follows it (which Decode refuses)
	// does not hide a newer version from Guard.
	var head map[string]json.RawMessage
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&head); err != nil {
		return 0, false, fmt.Errorf("decode %s %s: %w", f.Kind, path, err)
	}
	var raw json.RawMessage
	for k, r := range head {
		if !strings.EqualFold(k, f.Field) {
			continue
		}
		if raw != nil && !bytes.Equal(bytes.TrimSpace(raw), bytes.TrimSpace(r)) {
			return 0, true, &NewerError{Kind: f.Kind, Path: path, Newest: f.Version(), Bad: true,
				Raw: fmt.Sprintf("%s and %s (fields that differ only in case)", raw, r)}
		}
		raw = r
	}
	raw = bytes.TrimSpace(raw)
	if raw == nil || string(raw) == "null" {
		return 1, false, nil // no version field: version 1 (see Format)
	}
	// A whole number from 1 up, written as digits: anything else (a
	// string, a fraction, an exponent, a sign) is no version plinth
	// writes, and may be a newer plinth's.
	digits := len(raw) > 0 && raw[0] != '0'
	for _, c := range raw {
		digits = digits && c >= '0' && c <= '9'
	}
	if !digits {
		return 0, true, &NewerError{Kind: f.Kind, Path: path, Newest: f.Version(), Bad: true, Raw: string(raw)}
	}
	n, err := strconv.Atoi(string(raw))
	if err != nil || n > f.Version() {
		// Beyond an int is newer still.
		e := &NewerError{Kind: f.Kind, Path: path, Version: n, Newest: f.Version()}
		if err != nil {
			e.Raw = string(raw)
		}
		return n, true, e
	}
	return n, true, nil
}

// convert runs the steps from version ver to Version on data and returns
// the record at Version.
func (f Format) convert(path string, data []byte, ver int) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber() // sizes beyond 2^53 stay exact
	var rec map[string]any
	if err := d.Decode(&rec); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", f.Kind, path, err)
	}
	for ; ver < f.Version(); ver++ {
		if err := f.Steps[ver-1](rec); err != nil {
			return nil, fmt.Errorf("%s %s: convert version %d to %d: %w", f.Kind, path, ver, ver+1, err)
		}
	}
	rec[f.Field] = f.Version()
	return json.Marshal(rec)
}

// Guard refuses (a *NewerError) when path holds a record of a newer
// version than this plinth reads, or one whose version it cannot read
// (NewerError.Bad): whoever is about to replace or remove path calls it
// first, so that a newer plinth's record is never overwritten. A missing
// file, or one this plinth reads, passes; one that is no JSON object at
// all passes too (its owner's read says why).
func (f Format) Guard(path string) error {
	// Only a regular file is read (a FIFO would block the open, a symlink
	// points anywhere); anything else is no record, and a rename replaces
	// it.
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !fi.Mode().IsRegular() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", f.Kind, path, err)
	}
	file, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", f.Kind, path, err)
	}
	defer file.Close()
	data, err := io.ReadAll(file)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if _, _, err := f.version(path, data); errors.Is(err, ErrNewer) {
		return err
	}
	return nil
}

// Write stores v, a record of this format, as JSON at path atomically
// and durably (temp → fsync → rename → fsync of the directory). v must
// carry Version in Field: what this plinth writes is what it declares. A
// record of a newer version at path is refused (Guard) and left as it is.
func (f Format) Write(path string, v any) error { return f.write(path, v, true) }

// WriteBoot is Write for a boot record (temp → rename, not fsynced: see
// NewBoot).
func (f Format) WriteBoot(path string, v any) error { return f.write(path, v, false) }

func (f Format) write(path string, v any, durable bool) error {
	if err := f.Guard(path); err != nil {
		return err
	}
	data, err := f.Encode(path, v)
	if err != nil {
		return err
	}
	return writeFile(path, data, 0o600, durable)
}

// Encode is v as a record of this format (indented JSON and a newline),
// checked to carry Version in Field; path is for messages.
func (f Format) Encode(path string, v any) ([]byte, error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", f.Kind, path, err)
	}
	var head map[string]json.RawMessage
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", f.Kind, path, err)
	}
	if got := string(head[f.Field]); got != fmt.Sprint(f.Version()) {
		return nil, fmt.Errorf("encode %s %s: %s is %q, this plinth writes version %d", f.Kind, path, f.Field, got, f.Version())
	}
	return append(data, '\n'), nil
}
