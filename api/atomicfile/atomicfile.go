// Package atomicfile is the one way Aegis Edge writes a file that holds a secret or a
// trust anchor (node keys and tokens, the control plane's keys and admin.token, the
// operator's profile): a temporary file in the same directory with its mode set before
// any byte is written, fsync, rename over the target, fsync the directory. A reader, or
// a crash, sees the old content or the new one, never a torn or world-readable file.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// TempPrefix starts every temporary file's name, so a crash's leftovers are
// recognisable (and never mistaken for the file itself): `.tmp-<name>-<random>`.
const TempPrefix = ".tmp-"

// Owner is the user and group a file is given before it is renamed into place, so it
// never appears under the writer's. Root uses it when it writes into a directory that
// belongs to a service user (sudo aegis edge enroll on a host whose edged runs as
// aegis-edge): the service must be able to read what root wrote.
type Owner struct{ UID, GID int }

// Write atomically replaces path with data at mode perm.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteOwned(path, data, perm, nil)
}

// WriteOwned is Write with the file given to owner (nil: the writer keeps it).
func WriteOwned(path string, data []byte, perm os.FileMode, owner *Owner) error {
	tmp, err := writeTempSync(path, data, perm, true, owner)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// Stage replaces path with data at mode perm like Write, but leaves the directory's
// fsync to the caller (SyncDir), for a caller that makes several changes durable with
// one fsync of their directory. With syncData false the data is not fsynced either:
// only for files whose loss or truncation by a crash the reader tolerates.
func Stage(path string, data []byte, perm os.FileMode, syncData bool) error {
	return StageOwned(path, data, perm, syncData, nil)
}

// StageOwned is Stage with the file given to owner (nil: the writer keeps it).
func StageOwned(path string, data []byte, perm os.FileMode, syncData bool, owner *Owner) error {
	tmp, err := writeTempSync(path, data, perm, syncData, owner)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Create writes path only if it does not exist yet, returning an error wrapping
// os.ErrExist when it does (and never overwriting it). O_EXCL on the final name would
// expose a partial file, so the temporary file is linked into place instead.
func Create(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	// link(2) fails with EEXIST instead of replacing, which is the point.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s: %w", path, os.ErrExist)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// writeTemp writes data, synced, to a new temporary file beside path and returns its
// name; on any error nothing is left behind.
func writeTemp(path string, data []byte, perm os.FileMode) (name string, err error) {
	return writeTempSync(path, data, perm, true, nil)
}

func writeTempSync(path string, data []byte, perm os.FileMode, syncData bool, owner *Owner) (name string, err error) {
	f, err := os.CreateTemp(filepath.Dir(path), TempPrefix+filepath.Base(path)+"-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	// CreateTemp uses 0600 already; Chmod makes the mode independent of that detail
	// (and of the umask) before any byte is written.
	if err = f.Chmod(perm); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if owner != nil {
		if err = f.Chown(owner.UID, owner.GID); err != nil {
			return "", fmt.Errorf("write %s: give it to uid %d: %w", path, owner.UID, err)
		}
	}
	if _, err = f.Write(data); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if syncData {
		if err = f.Sync(); err != nil {
			return "", fmt.Errorf("write %s: fsync: %w", path, err)
		}
	}
	if err = f.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return f.Name(), nil
}

// SyncDir fsyncs a directory so a rename, link or removal in it survives a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s for fsync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
