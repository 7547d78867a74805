package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/audit"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// AppendAudit seals e onto the end of the chain. Inside InTx the writer connection
// is the store's only one, so nothing can append between reading the last entry and
// inserting this one; outside InTx, Store.AppendAudit opens a transaction for it.
func (q *queries) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	// Hash and return exactly what a later ListAudit will read back.
	e.At = microsOf(e.At)
	if e.Details == nil {
		e.Details = map[string]string{}
	}
	details, err := json.Marshal(e.Details)
	if err != nil {
		return store.AuditEntry{}, wrapf(err, "append audit")
	}
	var lastID int64
	var prevHash string
	err = q.w.QueryRowContext(ctx, `SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1`).Scan(&lastID, &prevHash)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return store.AuditEntry{}, wrapf(err, "append audit: read the chain's last entry")
	}
	e.ID = lastID + 1
	e = audit.Seal(e, prevHash)
	_, err = q.w.ExecContext(ctx, `
		INSERT INTO audit_log (id, at, tenant_id, actor, action, node_id, result, details, prev_hash, hash)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, micros(e.At), e.TenantID, e.Actor, e.Action, e.NodeID, e.Result, string(details), e.PrevHash, e.Hash)
	if err != nil {
		return store.AuditEntry{}, wrapf(err, "append audit")
	}
	return e, nil
}

// AppendAudit outside InTx: reading the chain's end and appending must be one
// transaction.
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) (out store.AuditEntry, err error) {
	err = s.InTx(ctx, func(tx store.Tx) error {
		out, err = tx.AppendAudit(ctx, e)
		return err
	})
	return out, err
}

// The chain's listings are sqlstore's.
