package rotation

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/api/atomicfile"
	"github.com/aegis-edge/aegis/edged/keystore"
)

// archiveName is the guide's name for a key archived at t: RFC 3339 in UTC, to the
// second.
const archiveName = "2006-01-02T15:04:05Z"

// archiveNameFine is used only when a key was already archived in the same second.
const archiveNameFine = "2006-01-02T15:04:05.000000000Z"

// ArchivedKey is one entry of archive.json: which file, from which rotation, and
// when the housekeeping may delete it.
type ArchivedKey struct {
	File           string    `json:"file"`
	RotationID     string    `json:"rotation_id"`
	KeyFingerprint string    `json:"key_fingerprint"`
	ArchivedAt     time.Time `json:"archived_at"`
	DeleteAfter    time.Time `json:"delete_after"`
}

type archiveIndex struct {
	Keys []ArchivedKey `json:"keys"`
}

func (h *Host) readIndex() (archiveIndex, error) {
	raw, err := os.ReadFile(h.cfg.Dir.File(keystore.ArchiveIndexFile))
	if errors.Is(err, fs.ErrNotExist) {
		return archiveIndex{}, nil
	}
	if err != nil {
		return archiveIndex{}, err
	}
	var idx archiveIndex
	if err := json.Unmarshal(raw, &idx); err != nil {
		// A corrupt index only loses retention choices: fall back to the default.
		h.log.Warn("archive.json is corrupt; archived keys fall back to the default retention", "error", err)
		return archiveIndex{}, nil
	}
	return idx, nil
}

// writeIndex writes archive.json as part of b; its data is not fsynced (a torn
// index only loses retention choices). b's Sync makes it durable.
func (h *Host) writeIndex(b *keystore.Batch, idx archiveIndex) error {
	if len(idx.Keys) == 0 {
		return b.Remove(keystore.ArchiveIndexFile)
	}
	raw, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	return b.WriteFileUnsynced(keystore.ArchiveIndexFile, append(raw, '\n'))
}

func (h *Host) archived(rotationID string) (ArchivedKey, bool) {
	idx, err := h.readIndex()
	if err != nil {
		return ArchivedKey{}, false
	}
	for _, e := range idx.Keys {
		if e.RotationID == rotationID {
			return e, true
		}
	}
	return ArchivedKey{}, false
}

// archive is S4: the old key goes to archive/<RFC 3339 UTC>.key (0600, in a 0700
// dir), its retention recorded first in archive.json under the rotation's id, so a
// redo after a crash rewrites the same file instead of archiving the key twice.
func (h *Host) archive(b *keystore.Batch, old ed25519.PrivateKey, rec record) (string, time.Time, error) {
	adir, err := h.cfg.Dir.Sub(keystore.ArchiveDir)
	if err != nil {
		return "", time.Time{}, err
	}
	idx, err := h.readIndex()
	if err != nil {
		return "", time.Time{}, err
	}
	var entry *ArchivedKey
	for i := range idx.Keys {
		if idx.Keys[i].RotationID == rec.RotationID {
			entry = &idx.Keys[i]
		}
	}
	if entry == nil {
		now := h.cfg.Now().UTC()
		name := now.Format(archiveName) + ".key"
		if taken(adir, idx, name) {
			name = now.Format(archiveNameFine) + ".key"
		}
		idx.Keys = append(idx.Keys, ArchivedKey{
			File:           name,
			RotationID:     rec.RotationID,
			KeyFingerprint: FingerprintOf(old),
			ArchivedAt:     now,
			DeleteAfter:    now.Add(rec.keepOld()),
		})
		entry = &idx.Keys[len(idx.Keys)-1]
		if err := h.writeIndex(b, idx); err != nil {
			return "", time.Time{}, err
		}
	}
	ab := adir.Batch()
	if err := ab.WriteKey(entry.File, old); err != nil {
		return "", time.Time{}, err
	}
	if err := ab.Sync(); err != nil {
		return "", time.Time{}, err
	}
	return adir.File(entry.File), entry.DeleteAfter, nil
}

func taken(adir *keystore.Dir, idx archiveIndex, name string) bool {
	if ok, _ := adir.Exists(name); ok {
		return true
	}
	for _, e := range idx.Keys {
		if e.File == name {
			return true
		}
	}
	return false
}

// Housekeep deletes archived keys whose retention has passed: the retention recorded
// when each was archived (so a --keep-old chosen by the CLI on a stopped host is
// honoured), else DefaultKeepOld from the time in its name (or its mtime). It returns
// the deleted paths. The daemon runs it periodically.
func (h *Host) Housekeep(ctx context.Context) ([]string, error) {
	d := h.cfg.Dir
	if ok, err := d.Exists(keystore.ArchiveDir); err != nil || !ok {
		return nil, err
	}
	unlock, err := h.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	adir := keystore.Open(d.File(keystore.ArchiveDir))
	if err := adir.RemoveTemps(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(adir.Path())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", adir.Path(), err)
	}
	idx, err := h.readIndex()
	if err != nil {
		return nil, err
	}
	byFile := map[string]ArchivedKey{}
	for _, e := range idx.Keys {
		byFile[e.File] = e
	}
	now := h.cfg.Now()
	present := map[string]bool{}
	var deleted []string
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, ".key") {
			continue
		}
		until, ok := byFile[name].DeleteAfter, byFile[name].File != ""
		if !ok {
			if t, err := time.Parse(time.RFC3339Nano, strings.TrimSuffix(name, ".key")); err == nil {
				until = t.Add(DefaultKeepOld)
			} else if fi, err := e.Info(); err == nil {
				until = fi.ModTime().Add(DefaultKeepOld)
			} else {
				continue
			}
		}
		if now.Before(until) {
			present[name] = true
			continue
		}
		if err := os.Remove(adir.File(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return deleted, fmt.Errorf("delete archived key %s: %w", adir.File(name), err)
		}
		deleted = append(deleted, adir.File(name))
		h.log.Info("deleted an archived key whose retention has passed", "file", adir.File(name), "delete_after", until)
	}
	// Keep index entries for files still there, and for the rotation in progress (its
	// entry may be written before its file).
	pending, _ := h.readRecord()
	kept := idx.Keys[:0]
	for _, e := range idx.Keys {
		if present[e.File] || (e.RotationID == pending.RotationID && pending.RotationID != "") {
			kept = append(kept, e)
		}
	}
	if len(kept) != len(byFile) || len(deleted) > 0 {
		sort.Slice(kept, func(i, j int) bool { return kept[i].ArchivedAt.Before(kept[j].ArchivedAt) })
		b := h.cfg.Dir.Batch()
		if err := h.writeIndex(b, archiveIndex{Keys: kept}); err != nil {
			return deleted, err
		}
		if err := b.Sync(); err != nil {
			return deleted, err
		}
	}
	if len(deleted) > 0 {
		if err := syncDir(adir.Path()); err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}

// Archive lists the archived keys with their retention, oldest first.
func (h *Host) Archive() ([]ArchivedKey, error) {
	adir := h.cfg.Dir.File(keystore.ArchiveDir)
	entries, err := os.ReadDir(adir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	idx, err := h.readIndex()
	if err != nil {
		return nil, err
	}
	byFile := map[string]ArchivedKey{}
	for _, e := range idx.Keys {
		byFile[e.File] = e
	}
	var out []ArchivedKey
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".key") || !e.Type().IsRegular() {
			continue
		}
		k, ok := byFile[e.Name()]
		if !ok {
			k = ArchivedKey{File: e.Name()}
			if t, err := time.Parse(time.RFC3339Nano, strings.TrimSuffix(e.Name(), ".key")); err == nil {
				k.ArchivedAt, k.DeleteAfter = t, t.Add(DefaultKeepOld)
			}
		}
		k.File = filepath.Join(adir, e.Name())
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].File < out[j].File })
	return out, nil
}

func syncDir(path string) error { return atomicfile.SyncDir(path) }
