package pool

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// ReadRecord loads a record of this schema (SchemaVersion) from path into
// v (durable.ReadRecord). A missing file is ErrNotFound.
func ReadRecord(path string, v any) error {
	err := durable.ReadRecord(path, SchemaVersion, v)
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
