//go:build unix

package keystore

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// On a packaged host the state dir belongs to aegis-edge (the daemon's user) and
// `sudo aegis edge enroll` writes into it as root while the daemon is stopped. Every
// file and directory root makes there must end up the directory owner's, or the
// daemon could not read its own key: the atomic writes (given away before the rename,
// so never seen root-owned), a batch's writes, the lock and pid files, the archive.
func TestRootWritesBelongToTheDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to write into another user's directory")
	}
	const uid, gid = 65534, 65533
	d := Open(filepath.Join(t.TempDir(), "aegis-edge"))
	if err := d.Create(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d.Path(), uid, gid); err != nil {
		t.Fatal(err)
	}
	unlock, err := d.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	if err := d.WriteKey(KeyFile, key); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteToken("tok"); err != nil {
		t.Fatal(err)
	}
	b := d.Batch()
	if err := b.WriteFile(RotationFile, []byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	arch, err := d.Sub(ArchiveDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := arch.WriteFile("old.key", []byte("x")); err != nil {
		t.Fatal(err)
	}
	unlock()
	dl, err := d.LockDaemon()
	if err != nil {
		t.Fatal(err)
	}
	dl.Release()

	n := 0
	err = filepath.WalkDir(d.Path(), func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s is %d:%d, want the dir owner's %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 8 {
		t.Fatalf("walked %d paths, expected the dir, key, token, rotation, lock, pid, archive and its file", n)
	}
}

// Root writing into its own directory (or a user writing into theirs) changes no
// owner: only a directory of another user makes root give its files away.
func TestRootWritesInRootDirStayRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	d := Open(filepath.Join(t.TempDir(), "edge"))
	if err := d.Create(); err != nil {
		t.Fatal(err)
	}
	if d.owner() != nil {
		t.Fatal("root's own directory asks for another owner")
	}
	if err := d.WriteToken("tok"); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(d.File(TokenFile))
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 {
		t.Fatalf("token owned by %d", st.Uid)
	}
}
