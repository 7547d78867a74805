package keystore

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/aegis-edge/aegis/api/atomicfile"
)

// tempPrefix starts every temporary file (atomicfile's), so a crash's leftovers are
// recognisable (and never mistaken for node.key).
const tempPrefix = atomicfile.TempPrefix

// WriteFile replaces name atomically with data, mode 0600 (atomicfile.Write: temp file
// in the same directory, fsync, rename, fsync the directory). A reader (or a crash)
// sees the old content or the new, never a torn file. Written by root into a
// directory of another user, the file is that user's (see owner). Callers hold Lock.
func (d *Dir) WriteFile(name string, data []byte) error {
	if strings.ContainsRune(name, filepath.Separator) {
		return fmt.Errorf("keystore: %q is not a plain file name", name)
	}
	return atomicfile.WriteOwned(d.File(name), data, FileMode, d.owner())
}

// Remove deletes name (missing is fine) and fsyncs the directory.
// Nothing to remove costs no fsync: every reconcile clears files that are usually
// absent, and a removal made earlier was made durable by whoever made it.
func (d *Dir) Remove(name string) error {
	err := os.Remove(d.File(name))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	}
	return syncDir(d.path)
}

// Rename atomically replaces the file to with the file from (both plain names in the
// directory) and fsyncs the directory, so the rename survives a crash.
func (d *Dir) Rename(from, to string) error {
	for _, n := range []string{from, to} {
		if strings.ContainsRune(n, filepath.Separator) {
			return fmt.Errorf("keystore: %q is not a plain file name", n)
		}
	}
	if err := os.Rename(d.File(from), d.File(to)); err != nil {
		return fmt.Errorf("rename %s to %s: %w", from, to, err)
	}
	return syncDir(d.path)
}

// Exists reports whether name exists in the directory.
func (d *Dir) Exists(name string) (bool, error) {
	_, err := os.Lstat(d.File(name))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("stat %s: %w", d.File(name), err)
	}
}

// RemoveTemps deletes what an interrupted WriteFile left behind, so no key material
// outlives a crash in a temporary file.
func (d *Dir) RemoveTemps() error {
	entries, err := os.ReadDir(d.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", d.path, err)
	}
	removed := false
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			if err := os.Remove(d.File(e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			removed = true
		}
	}
	if removed {
		return syncDir(d.path)
	}
	return nil
}

// Sub returns the subdirectory name (mode 0700, created if missing, the creation
// made durable by an fsync of this directory) as a Dir of its own, with the same
// atomic writes. The archive of rotated keys lives in one.
func (d *Dir) Sub(name string) (*Dir, error) {
	if strings.ContainsRune(name, filepath.Separator) {
		return nil, fmt.Errorf("keystore: %q is not a plain directory name", name)
	}
	p := d.File(name)
	if err := os.Mkdir(p, DirMode); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create %s: %w", p, err)
	} else if err == nil {
		if err := d.adoptPath(p); err != nil {
			return nil, fmt.Errorf("create %s: %w", p, err)
		}
		if err := syncDir(d.path); err != nil {
			return nil, err
		}
	}
	st, err := os.Lstat(p)
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", p, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", p)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, &PermissionError{Path: p, Mode: st.Mode(), Want: DirMode, Dir: true}
	}
	return Open(p), nil
}

func syncDir(path string) error { return atomicfile.SyncDir(path) }

// Batch groups changes to a directory so that they share one fsync of it: each
// change is atomic on its own (a file is replaced whole, by rename), and Sync makes
// all of them durable at once. Until Sync returns, a crash may keep a prefix of them
// (a journaling file system applies one directory's metadata changes in order): use
// a Batch only for changes whose every prefix is a state the reader (reconcile, for
// a rotation) recovers from. Callers hold Lock.
type Batch struct {
	d     *Dir
	dirty bool
}

// Batch starts a batch of changes to d.
func (d *Dir) Batch() *Batch { return &Batch{d: d} }

func (b *Batch) stage(name string, data []byte, syncData bool) error {
	if strings.ContainsRune(name, filepath.Separator) {
		return fmt.Errorf("keystore: %q is not a plain file name", name)
	}
	b.dirty = true
	return atomicfile.StageOwned(b.d.File(name), data, FileMode, syncData, b.d.owner())
}

// WriteFile replaces name with data (0600), the data fsynced before the rename, so
// the file is never seen torn.
func (b *Batch) WriteFile(name string, data []byte) error { return b.stage(name, data, true) }

// WriteKey is WriteFile for a key, as PKCS#8 PEM.
func (b *Batch) WriteKey(name string, key ed25519.PrivateKey) error {
	raw, err := EncodeKey(key)
	if err != nil {
		return err
	}
	return b.WriteFile(name, raw)
}

// WriteFileUnsynced replaces name with data without fsyncing the data: for files
// whose loss or truncation by a crash is harmless (the reader falls back).
func (b *Batch) WriteFileUnsynced(name string, data []byte) error { return b.stage(name, data, false) }

// Rename replaces to with from.
func (b *Batch) Rename(from, to string) error {
	for _, n := range []string{from, to} {
		if strings.ContainsRune(n, filepath.Separator) {
			return fmt.Errorf("keystore: %q is not a plain file name", n)
		}
	}
	b.dirty = true
	if err := os.Rename(b.d.File(from), b.d.File(to)); err != nil {
		return fmt.Errorf("rename %s to %s: %w", from, to, err)
	}
	return nil
}

// Remove deletes name (missing is fine).
func (b *Batch) Remove(name string) error {
	if err := os.Remove(b.d.File(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	b.dirty = true
	return nil
}

// Sync makes every change of the batch durable with one fsync of the directory.
func (b *Batch) Sync() error {
	if !b.dirty {
		return nil
	}
	b.dirty = false
	return syncDir(b.d.path)
}
