package keystore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// Lock takes the directory's mutation lock (flock on .lock), waiting for a holder in
// another process (or another open of the file in this one) to let go. Every change to
// the directory's files happens under it, by edged and aegisctl alike. The returned
// func releases it.
func (d *Dir) Lock(ctx context.Context) (unlock func(), err error) {
	f, err := d.openLock()
	if err != nil {
		return nil, err
	}
	// Poll with LOCK_NB rather than block in flock(2), so a stuck holder cannot make
	// the caller ignore its context.
	for {
		busy, err := tryLock(f, true)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", d.File(LockFile), err)
		}
		if !busy {
			break
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the state dir lock %s: %w", d.File(LockFile), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return func() {
		_ = unlockFile(f)
		_ = f.Close()
	}, nil
}

// openLock opens (creating it if needed) the lock file, which belongs to the
// directory's owner even when root made it (see owner): the daemon must open it too.
func (d *Dir) openLock() (*os.File, error) {
	f, err := os.OpenFile(d.File(LockFile), os.O_RDWR|os.O_CREATE, FileMode)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", d.File(LockFile), err)
	}
	if err := d.adopt(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("open lock %s: %w", d.File(LockFile), err)
	}
	return f, nil
}

// TryLock takes the directory's mutation lock if it is free: ok is false (and
// nothing is held) while another holder has it.
func (d *Dir) TryLock() (unlock func(), ok bool, err error) {
	f, err := d.openLock()
	if err != nil {
		return nil, false, err
	}
	busy, err := tryLock(f, true)
	if err != nil || busy {
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("lock %s: %w", d.File(LockFile), err)
		}
		return nil, false, nil
	}
	return func() {
		_ = unlockFile(f)
		_ = f.Close()
	}, true, nil
}

// DaemonLock is held by a running edged for its whole life (flock on edged.pid), so
// only one daemon ever serves a state directory.
type DaemonLock struct {
	f *os.File
}

// LockDaemon takes the daemon lock without waiting: ErrDaemonRunning if another edged
// holds it. The file carries the holder's pid, for people.
func (d *Dir) LockDaemon() (*DaemonLock, error) {
	f, err := os.OpenFile(d.File(PIDFile), os.O_RDWR|os.O_CREATE, FileMode)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", d.File(PIDFile), err)
	}
	if err := d.adopt(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", d.File(PIDFile), err)
	}
	if busy, err := tryLock(f, true); err != nil || busy {
		f.Close()
		if busy {
			return nil, fmt.Errorf("%w on %s (pid file %s)", ErrDaemonRunning, d.path, d.File(PIDFile))
		}
		return nil, fmt.Errorf("lock %s: %w", d.File(PIDFile), err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &DaemonLock{f: f}, nil
}

// Release lets go of the daemon lock. The file stays: removing a flocked file would
// let two daemons lock two different inodes.
func (l *DaemonLock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	_ = l.f.Truncate(0)
	err := unlockFile(l.f)
	cerr := l.f.Close()
	l.f = nil
	return errors.Join(err, cerr)
}

// DaemonRunning reports whether some edged holds the daemon lock right now, so
// aegisctl can decide between asking the daemon and doing the work itself.
func (d *Dir) DaemonRunning() (bool, error) {
	f, err := os.OpenFile(d.File(PIDFile), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open %s: %w", d.File(PIDFile), err)
	}
	defer f.Close()
	busy, err := tryLock(f, false)
	if err != nil {
		return false, fmt.Errorf("probe %s: %w", d.File(PIDFile), err)
	}
	if busy {
		return true, nil
	}
	_ = unlockFile(f)
	return false, nil
}
