package pool

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// The records a pool keeps beside its volumes and snapshots (its index,
// OpenIndex), each a durable.Format with its version in "schema".
//
// Version 1 is what v0.1.0 writes (and every plinth before it); a record
// without "schema" would be version 1 too, but v0.1.0 writes it always.
// v0.1.0 refuses a record of any other version, and so the pool that
// holds it: such a pool does not open, and plinth does not start.
var (
	VolumeRecords   = durable.Format{Kind: "volume record", Field: "schema"}
	SnapshotRecords = durable.Format{Kind: "snapshot record", Field: "schema"}
)

// ReadRecord loads a record of format f from path into v, converted to
// the version this plinth writes (durable.Format.Read). A missing file is
// ErrNotFound; a newer version is durable.ErrNewer.
func ReadRecord(f durable.Format, path string, v any) error {
	err := f.Read(path, v)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", path, ErrNotFound)
	}
	return err
}

// RecordIDs lists the IDs of the *.json records in dir, skipping temp files
// and names that are not valid IDs (ValidateID).
func RecordIDs(dir string) ([]string, error) {
	return durable.RecordIDs(dir, func(id string) error { return ValidateID("id", id) })
}
