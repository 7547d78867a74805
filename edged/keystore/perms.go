package keystore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// PermissionError says which path is too open and how to fix it.
type PermissionError struct {
	Path string
	Mode fs.FileMode
	Want fs.FileMode
	Dir  bool
}

func (e *PermissionError) Error() string {
	what := "file"
	if e.Dir {
		what = "directory"
	}
	return fmt.Sprintf("%s %s has mode %04o, which lets group or others in; it must be %04o: run `chmod %o %s`",
		what, e.Path, e.Mode.Perm(), e.Want, e.Want, e.Path)
}

// Unwrap lets callers test errors.Is(err, ErrInsecure).
func (e *PermissionError) Unwrap() error { return ErrInsecure }

// secretFiles must never be reachable by group or others.
var secretFiles = []string{KeyFile, TokenFile, KeyNextFile, TokenNextFile}

// CheckPermissions refuses, as ssh does, a state directory that group or others can
// enter and a key or token file they can read or write. Absent files are fine (the host
// may not be enrolled yet); an absent directory is fine too (nothing to protect yet).
func (d *Dir) CheckPermissions() error {
	st, err := os.Stat(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat state dir %s: %w", d.path, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("state dir %s is not a directory", d.path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return &PermissionError{Path: d.path, Mode: st.Mode(), Want: DirMode, Dir: true}
	}
	for _, name := range secretFiles {
		p := d.File(name)
		st, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file (symlinks are refused): replace it with the real file, mode 0600", p)
		}
		if st.Mode().Perm()&0o077 != 0 {
			return &PermissionError{Path: p, Mode: st.Mode(), Want: FileMode}
		}
	}
	return nil
}
