// Records and versions, from an outside review: records whose version field a
// careless or newer writer made odd must be refused and left as they are.
package durable

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

var reviewFormat = Format{Kind: "volume record", Field: "schema"}

type reviewRec struct {
	Schema int    `json:"schema"`
	ID     string `json:"id"`
}

// A version that is a JSON integer above Version but does not fit an int
// is still a newer version: Read must say ErrNewer (so OpenPools stands
// the pool unavailable instead of failing the start), and Guard must
// refuse, so Write leaves the file as it is.
func TestAttackHugeVersionIsNewer(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pv-a.json")
	orig := []byte(`{"schema": 99999999999999999999, "id": "pv-a"}` + "\n")
	if err := os.WriteFile(p, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	var r reviewRec
	if err := reviewFormat.Read(p, &r); !errors.Is(err, ErrNewer) {
		t.Errorf("Read = %v, want ErrNewer", err)
	}
	if err := reviewFormat.Guard(p); !errors.Is(err, ErrNewer) {
		t.Errorf("Guard = %v, want ErrNewer", err)
	}
	_ = reviewFormat.Write(p, reviewRec{Schema: 1, ID: "pv-a"})
	if b, _ := os.ReadFile(p); string(b) != string(orig) {
		t.Errorf("Write replaced a record of version 99999999999999999999:\nwas %s\nnow %s", orig, b)
	}
}

// A record whose version Read refuses (not a plain integer, or trailing
// data after the object) is refused by Read, but Guard passes it, so Write
// replaces it. None of these is a record this plinth wrote; it may be a
// newer plinth's (a version field made a string or a float, say): it must
// be left as it is, like a newer one.
func TestAttackUnreadableVersionNotReplaced(t *testing.T) {
	for name, rec := range map[string]string{
		"string":         `{"schema": "2", "id": "pv-a"}`,
		"float 2.0":      `{"schema": 2.0, "id": "pv-a"}`,
		"exp 1e1":        `{"schema": 1e1, "id": "pv-a"}`,
		"object":         `{"schema": {"major": 2}, "id": "pv-a"}`,
		"negative":       `{"schema": -1, "id": "pv-a"}`,
		"zero":           `{"schema": 0, "id": "pv-a"}`,
		"trailing value": `{"schema": 2, "id": "pv-a"} {"schema": 3}`,
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "pv-a.json")
			os.WriteFile(p, []byte(rec), 0o600)
			var r reviewRec
			if err := reviewFormat.Read(p, &r); err == nil {
				t.Fatalf("Read of %s succeeded: %+v", rec, r)
			}
			err := reviewFormat.Write(p, reviewRec{Schema: 1, ID: "pv-a"})
			if b, _ := os.ReadFile(p); string(b) != rec {
				t.Errorf("Write = %v: a record Read refuses was replaced:\nwas %s\nnow %s", err, rec, b)
			}
		})
	}
}

// The version is looked up case-sensitively ("schema"), but the record is
// decoded into its struct case-insensitively: {"Schema": 2} reads as
// version 1 and yields a struct whose Schema is 2.
func TestAttackVersionFieldCase(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pv-a.json")
	os.WriteFile(p, []byte(`{"Schema": 2, "id": "pv-a"}`), 0o600)
	var r reviewRec
	err := reviewFormat.Read(p, &r)
	if err == nil {
		t.Errorf("Read of {\"Schema\": 2} = nil error, struct %+v: read as version 1, decoded as version %d", r, r.Schema)
	}
	if gerr := reviewFormat.Guard(p); gerr == nil && r.Schema == 2 {
		t.Errorf("Guard passes a record whose decoded version is 2")
	}
}

// Read of a FIFO in place of a record blocks for ever (Guard and the claim
// records open without blocking; Format.Read uses os.ReadFile). Every scan
// (targets.of, deviceBound, stagedRecords.all, OpenIndex, the DRA
// checkpoint) hangs on it.
func TestAttackReadFIFODoesNotBlock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pv-a.json")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skip(err)
	}
	done := make(chan error, 1)
	go func() {
		var r reviewRec
		done <- reviewFormat.Read(p, &r)
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Read of a FIFO succeeded")
		}
	case <-time.After(3 * time.Second):
		// Unblock the reader so the test binary can exit.
		if f, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Error("Read of a FIFO in place of a record blocked for 3s (os.ReadFile opens it blocking)")
	}
}
