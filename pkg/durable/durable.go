package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// WriteFile writes data to path so that a crash at any point leaves
// either the old content or the new: temp file, fsync, rename, fsync dir.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return writeFile(path, data, perm, true)
}

// writeFile writes data to a temp file renamed to path; with durable it
// fsyncs the file before the rename and the directory after it.
func writeFile(path string, data []byte, perm os.FileMode, durable bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp file for %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmpName, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("chmod %s: %w", tmpName, err)
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return fmt.Errorf("fsync %s: %w", tmpName, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmpName, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmpName, path, err)
	}
	if !durable {
		return nil
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that renames and unlinks in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// A boot record (Format.WriteBoot) records kernel state that no reboot
// keeps (a mount, a loop device): it is written temp → rename, not
// fsynced, since a process that crashes leaves it whole in the page cache,
// and after a machine crash what it describes is gone. Whoever keeps such
// records must drop those of an earlier boot unread (a crash may have left
// them torn): see NewBoot.

// RemoveBootRecord removes a record written by Format.WriteBoot (missing
// is fine), without an fsync.
func RemoveBootRecord(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// bootIDFile is the kernel's ID of the running boot.
const bootIDFile = "/proc/sys/kernel/random/boot_id"

// NewBoot keeps the boot records of dir (Format.WriteBoot) to the running
// boot: when dir/boot_id names an earlier boot, forget runs (it drops
// those records, which may be torn); then dir/boot_id names this boot,
// durably. A dir without boot_id is taken for this boot's (records made
// before it was kept were fsynced).
func NewBoot(dir string, forget func() error) error {
	cur, err := os.ReadFile(bootIDFile)
	if err != nil {
		return fmt.Errorf("read boot ID: %w", err)
	}
	p := filepath.Join(dir, "boot_id")
	prev, err := os.ReadFile(p)
	switch {
	case err == nil && string(prev) == string(cur):
		return nil
	case err == nil:
		if err := forget(); err != nil {
			return err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("read %s: %w", p, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return WriteFile(p, cur, 0o600)
}

// Remove removes path (missing is fine) and fsyncs its directory.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// RecordIDs lists the IDs of the *.json records in dir, skipping
// directories, temp files and names that valid refuses.
func RecordIDs(dir string, valid func(id string) error) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var ids []string
	for _, e := range entries {
		name := e.Name()
		id, ok := strings.CutSuffix(name, ".json")
		if !ok || e.IsDir() || valid(id) != nil {
			continue
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// CleanTemp removes leftover temp files of WriteFile in dir (from a
// crash between create and rename).
func CleanTemp(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".tmp-") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("remove temp %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}
