package keystore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// tempPrefix starts every temporary file, so a crash's leftovers are recognisable
// (and never mistaken for node.key).
const tempPrefix = ".tmp-"

// WriteFile replaces name atomically with data, mode 0600: a temp file in the same
// directory, fsync, rename over the target, fsync the directory. A reader (or a crash)
// sees the old content or the new, never a torn file. Callers hold Lock.
func (d *Dir) WriteFile(name string, data []byte) (err error) {
	if strings.ContainsRune(name, filepath.Separator) {
		return fmt.Errorf("keystore: %q is not a plain file name", name)
	}
	target := d.File(name)
	f, err := os.CreateTemp(d.path, tempPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", target, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// CreateTemp already uses 0600; Chmod makes it independent of that detail.
	if err = f.Chmod(FileMode); err != nil {
		return fmt.Errorf("write %s: %w", target, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", target, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", target, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", target, err)
	}
	if err = os.Rename(tmp, target); err != nil {
		return fmt.Errorf("write %s: %w", target, err)
	}
	if err = syncDir(d.path); err != nil {
		return fmt.Errorf("write %s: %w", target, err)
	}
	return nil
}

// Remove deletes name (missing is fine) and fsyncs the directory.
func (d *Dir) Remove(name string) error {
	if err := os.Remove(d.File(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(d.path)
}

func syncDir(path string) error {
	dir, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open dir for fsync: %w", err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", path, err)
	}
	return nil
}
