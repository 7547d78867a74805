// Package securefile is how the control plane writes files that hold secrets or trust
// anchors (keys, certificates, admin.token). It is api/atomicfile, the one atomic
// writer every program of Aegis Edge shares (temp file with its mode set first, fsync,
// rename, fsync the directory), under the name the control plane's callers use.
package securefile

import (
	"os"

	"github.com/aegis-edge/aegis/api/atomicfile"
)

// Write atomically replaces path with data at mode perm.
func Write(path string, data []byte, perm os.FileMode) error {
	return atomicfile.Write(path, data, perm)
}

// Create writes path only if it does not exist yet; an error wrapping os.ErrExist
// when it does, and it is never overwritten.
func Create(path string, data []byte, perm os.FileMode) error {
	return atomicfile.Create(path, data, perm)
}

// SyncDir fsyncs a directory so a rename in it survives a crash.
func SyncDir(dir string) error { return atomicfile.SyncDir(dir) }
