// Package audit owns the audit trail's hash chain: the canonical encoding an entry's
// hash covers, sealing an entry onto the chain, and verifying a stored chain.
//
// Each entry carries the hash of the entry before it (PrevHash, "" for the first) and
// its own Hash, SHA-256 over a length-prefixed encoding of every field it shows an
// operator: id, time (UTC microseconds), tenant, actor, action, node, result, the
// details sorted by key, and PrevHash. Editing, deleting, inserting or moving a row
// breaks the chain at that row or the one after it. The chain holds no secret: it
// shows tampering by someone who edits rows, not by someone who rewrites the whole
// chain from the tampered row on, and it cannot show that the newest entries were cut
// off: copy the newest entry's hash somewhere else to anchor it.
package audit

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// domain separates these hashes from every other SHA-256 in the system.
const domain = "aegis-audit-v1\x00"

// Hash returns the hex SHA-256 of e's canonical encoding. e.Hash itself is not
// covered; e.PrevHash is.
func Hash(e store.AuditEntry) string {
	var b []byte
	b = append(b, domain...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.ID))
	b = binary.BigEndian.AppendUint64(b, uint64(e.At.UnixMicro()))
	for _, s := range []string{e.TenantID, e.Actor, e.Action, e.NodeID, e.Result} {
		b = appendString(b, s)
	}
	keys := make([]string, 0, len(e.Details))
	for k := range e.Details {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = binary.BigEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, e.Details[k])
	}
	b = appendString(b, e.PrevHash)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// Seal links e after an entry whose hash is prevHash ("" when e is the first): it sets
// e.PrevHash and e.Hash. e.ID and e.At must already be what the store will keep (At
// in whole microseconds).
func Seal(e store.AuditEntry, prevHash string) store.AuditEntry {
	e.PrevHash = prevHash
	e.Hash = Hash(e)
	return e
}

// Normalize puts At in the form both stores keep (UTC, whole microseconds), so the
// hash computed before the insert matches the row read back.
func Normalize(at time.Time) time.Time {
	return at.UTC().Truncate(time.Microsecond)
}

// Break says where and how a chain is broken.
type Break struct {
	ID      int64
	Problem string
}

func (b *Break) Error() string { return fmt.Sprintf("audit entry %d: %s", b.ID, b.Problem) }

// Chain checks entries one at a time, in id order, from the first entry of the log.
type Chain struct {
	prevHash string
	prevID   int64
	checked  int64
}

// Next checks e against its own hash and the entry before it; a *Break when the chain
// breaks at e.
func (c *Chain) Next(e store.AuditEntry) error {
	switch {
	case e.ID <= c.prevID:
		return &Break{e.ID, fmt.Sprintf("listed after entry %d: the log is out of order", c.prevID)}
	case Hash(e) != e.Hash:
		return &Break{e.ID, "its contents do not match its hash: the entry was edited, or moved from another position"}
	case e.PrevHash != c.prevHash && c.checked == 0:
		return &Break{e.ID, "it is the oldest entry but does not start the chain: older entries were deleted"}
	case e.PrevHash != c.prevHash:
		return &Break{e.ID, fmt.Sprintf("it does not follow entry %d (prev_hash differs): an entry between them was deleted or inserted, or entries were reordered", c.prevID)}
	}
	c.prevHash, c.prevID = e.Hash, e.ID
	c.checked++
	return nil
}

// Checked is how many entries passed.
func (c *Chain) Checked() int64 { return c.checked }

// LastHash is the hash of the last entry that passed ("" before any).
func (c *Chain) LastHash() string { return c.prevHash }

// Report is the outcome of Verify.
type Report struct {
	// Checked counts the entries that passed before the first break (all of them when
	// Break is nil).
	Checked int64
	Break   *Break
	// LastHash is the hash of the last good entry: record it elsewhere to notice the
	// newest entries being cut off later.
	LastHash string
}

// pageSize bounds each read of the log.
const pageSize = 1000

// Verify walks the whole log (every tenant), oldest first, and reports the first
// entry that breaks the chain. An error is a failure to read, not a broken chain.
func Verify(ctx context.Context, st store.Tx) (Report, error) {
	var c Chain
	var after int64
	for {
		page, err := st.ListAudit(ctx, "", after, pageSize)
		if err != nil {
			return Report{}, fmt.Errorf("verify audit: %w", err)
		}
		for _, e := range page {
			if err := c.Next(e); err != nil {
				return Report{Checked: c.Checked(), Break: err.(*Break), LastHash: c.LastHash()}, nil
			}
		}
		if len(page) < pageSize {
			return Report{Checked: c.Checked(), LastHash: c.LastHash()}, nil
		}
		after = page[len(page)-1].ID
	}
}
