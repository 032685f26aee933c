package durable

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
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

// NewerError is a record of a version newer than this plinth reads.
type NewerError struct {
	Kind, Path      string
	Version, Newest int
}

func (e *NewerError) Error() string {
	return fmt.Sprintf("%s %s is version %d, and this plinth reads versions up to %d: a newer plinth wrote it; it is left untouched (run that plinth again, or remove the file once what it records is gone)",
		e.Kind, e.Path, e.Version, e.Newest)
}

// Is makes errors.Is(err, ErrNewer) true.
func (e *NewerError) Is(target error) bool { return target == ErrNewer }

// Read loads the record at path into v, converted to Version. A missing
// file is an error that wraps fs.ErrNotExist; a newer version is a
// *NewerError.
func (f Format) Read(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return f.Decode(path, data, v)
}

// Decode is Read of data already read from path (for messages).
func (f Format) Decode(path string, data []byte, v any) error {
	ver, err := f.version(path, data)
	if err != nil {
		return err
	}
	if ver < f.Version() {
		if data, err = f.convert(path, data, ver); err != nil {
			return err
		}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s %s: %w", f.Kind, path, err)
	}
	return nil
}

// version reads the record's version and checks that this plinth reads it.
func (f Format) version(path string, data []byte) (int, error) {
	var head map[string]json.RawMessage
	if err := json.Unmarshal(data, &head); err != nil {
		return 0, fmt.Errorf("decode %s %s: %w", f.Kind, path, err)
	}
	ver := 1 // no version field: version 1 (see Format)
	if raw, ok := head[f.Field]; ok {
		if err := json.Unmarshal(raw, &ver); err != nil {
			return 0, fmt.Errorf("%s %s: version %s: %w", f.Kind, path, raw, err)
		}
	}
	switch {
	case ver > f.Version():
		return ver, &NewerError{Kind: f.Kind, Path: path, Version: ver, Newest: f.Version()}
	case ver < 1:
		return ver, fmt.Errorf("%s %s: version %d: no plinth writes that version", f.Kind, path, ver)
	}
	return ver, nil
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
// version than this plinth reads: whoever is about to replace or remove
// path calls it first, so that a newer plinth's record is never
// overwritten. A missing file, or one this plinth reads, passes; one that
// cannot be decoded at all passes too (its owner's read says why).
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
	if _, err := f.version(path, data); errors.Is(err, ErrNewer) {
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
