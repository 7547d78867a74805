package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFile is the file in the data dir a serving control plane holds locked.
const LockFile = "controlplane.lock"

// ErrDataDirInUse means another control plane serves the data dir.
var ErrDataDirInUse = errors.New("data dir in use by another control plane")

// dataDirLock is held by a serving control plane for its whole life (flock on
// LockFile), so two processes never write one SQLite database, one admin token
// and one CA at once. The kernel drops it when the process dies, even with -9.
type dataDirLock struct{ f *os.File }

// lockDataDir takes the lock without waiting. The file carries the holder's pid,
// for the person reading the refusal.
func lockDataDir(dir string) (*dataDirLock, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = "pid " + strconv.Itoa(pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by %s (lock file %s); stop that control plane first, or give this one its own --data-dir",
				ErrDataDirInUse, dir, holder, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dataDirLock{f: f}, nil
}

// release lets go of the lock. The file stays: removing a locked file would let two
// processes lock two different inodes of one name.
func (l *dataDirLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	_ = l.f.Truncate(0)
	err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	cerr := l.f.Close()
	l.f = nil
	return errors.Join(err, cerr)
}
