package keystore

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/aegis-edge/aegis/api/fingerprint"
	"github.com/aegis-edge/aegis/api/nodetoken"
)

// ErrKeyMismatch: node.key is not the key node.token is bound to (its cnf.kfp). The
// control plane would refuse every envelope as bad_signature, so edged must not
// connect with it and loop forever; the owner must put the right key back.
var ErrKeyMismatch = errors.New("node.key does not match this host's token")

// KeyMismatchError says which key is there, which one the token wants, and, when the
// archive holds the wanted one, which file.
type KeyMismatchError struct {
	Dir              string
	KeyFingerprint   string // of node.key
	TokenFingerprint string // the token's cnf.kfp
	Archived         string // archive/<name>.key holding the wanted key, or ""
}

func (e *KeyMismatchError) Error() string {
	msg := fmt.Sprintf("node.key (%s) is not the key this host's token is bound to (%s); "+
		"was node.key edited or replaced by hand? nothing was changed on disk",
		e.KeyFingerprint, e.TokenFingerprint)
	if e.Archived != "" {
		arch := filepath.Join(e.Dir, ArchiveDir, e.Archived)
		return msg + fmt.Sprintf(": %s holds the right key; restore it with `install -m 0600 %s %s` (edged picks it up by itself)",
			arch, arch, filepath.Join(e.Dir, KeyFile))
	}
	return msg + ": restore node.key from a backup, or run `aegis edge logout` and enroll again with a new enrollment token " +
		"(to rotate a key, always use `aegis edge keys rotate`)"
}

func (e *KeyMismatchError) Unwrap() error { return ErrKeyMismatch }

// CheckKeyBinding returns a *KeyMismatchError when key is not the key token is bound
// to. A token that cannot be read is not judged here (the server says what is wrong with
// it), and neither is a directory with a rotation in progress: between its steps the
// key and the token legitimately disagree until reconcile finishes. It reads only.
func (d *Dir) CheckKeyBinding(key ed25519.PrivateKey, token string) error {
	if busy, err := d.Exists(RotationFile); err != nil || busy {
		return err
	}
	claims, err := nodetoken.Peek(token)
	if err != nil || claims.Cnf.KeyFingerprint == "" {
		return nil
	}
	have := fingerprint.Of(key.Public().(ed25519.PublicKey))
	if have == claims.Cnf.KeyFingerprint {
		return nil
	}
	return &KeyMismatchError{
		Dir: d.path, KeyFingerprint: have, TokenFingerprint: claims.Cnf.KeyFingerprint,
		Archived: d.archivedKeyWith(claims.Cnf.KeyFingerprint),
	}
}

// archivedKeyWith is the newest archive/*.key whose public key has fingerprint fp.
func (d *Dir) archivedKeyWith(fp string) string {
	entries, err := os.ReadDir(d.File(ArchiveDir))
	if err != nil {
		return ""
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".key") {
			names = append(names, e.Name())
		}
	}
	// RFC 3339 names sort by time: try the newest first.
	slices.Sort(names)
	slices.Reverse(names)
	for _, n := range names {
		raw, err := os.ReadFile(filepath.Join(d.File(ArchiveDir), n))
		if err != nil {
			continue
		}
		k, err := DecodeKey(raw)
		if err != nil {
			continue
		}
		if fingerprint.Of(k.Public().(ed25519.PublicKey)) == fp {
			return n
		}
	}
	return ""
}
