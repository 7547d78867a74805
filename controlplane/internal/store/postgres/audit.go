package postgres

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/audit"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// auditLockKey names the advisory lock every AppendAudit holds until its transaction
// ends. It makes the chain a chain: an appender reads the last entry's id and hash
// and inserts the next one while no other transaction can append, so two concurrent
// transactions never link to the same predecessor. It also makes ids visible in
// order, so a reader paging with "id > the last id I saw" never skips one. The cost:
// audited transactions finish one at a time from their AppendAudit on, so AppendAudit
// belongs at the end of a transaction (where the domain puts it), not before slow work
// or further row locks.
const auditLockKey int64 = 0x6165676973_02 // "aegis", 2

// AppendAudit seals e onto the end of the chain. The lock is taken by a statement of
// its own: at READ COMMITTED each statement sees what was committed when it started,
// so the read of the chain's end must start after the lock is held, or it could miss
// the entry of the transaction that held the lock just before.
func (q *queries) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	// Hash and return exactly what a later ListAudit reads (microseconds, UTC).
	e.At = audit.Normalize(e.At)
	if e.Details == nil {
		e.Details = map[string]string{}
	}
	if _, err := q.db.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, auditLockKey); err != nil {
		return store.AuditEntry{}, wrapf(err, "append audit: lock the chain")
	}
	var lastID int64
	var prevHash string
	err := q.db.QueryRow(ctx, `SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1`).Scan(&lastID, &prevHash)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return store.AuditEntry{}, wrapf(err, "append audit: read the chain's last entry")
	}
	e.ID = lastID + 1
	e = audit.Seal(e, prevHash)
	_, err = q.db.Exec(ctx, `
		INSERT INTO audit_log (id, at, tenant_id, actor, action, node_id, result, details, prev_hash, hash)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10)`,
		e.ID, e.At, e.TenantID, e.Actor, e.Action, e.NodeID, e.Result, e.Details, e.PrevHash, e.Hash)
	if err != nil {
		return store.AuditEntry{}, wrapf(err, "append audit")
	}
	return e, nil
}

// AppendAudit outside InTx: the lock, the read of the chain's end and the insert must
// share one transaction (on the pool each statement would be its own, and the lock
// would be gone before the insert).
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) (out store.AuditEntry, err error) {
	err = s.InTx(ctx, func(tx store.Tx) error {
		out, err = tx.AppendAudit(ctx, e)
		return err
	})
	return out, err
}

// ListAudit: limit <= 0 means no limit.
func (q *queries) ListAudit(ctx context.Context, tenantID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	return q.listAudit(ctx, tenantID, "", afterID, limit)
}

func (q *queries) ListNodeAudit(ctx context.Context, tenantID, nodeID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	if nodeID == "" {
		return []store.AuditEntry{}, nil
	}
	return q.listAudit(ctx, tenantID, nodeID, afterID, limit)
}

// listAudit: "" filters nothing; limit <= 0 means no limit.
func (q *queries) listAudit(ctx context.Context, tenantID, nodeID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	query := `
		SELECT id, at, tenant_id, actor, action, node_id, result, details, prev_hash, hash
		FROM audit_log
		WHERE id > $1`
	args := []any{afterID}
	if tenantID != "" {
		args = append(args, tenantID)
		query += ` AND tenant_id = $` + strconv.Itoa(len(args))
	}
	if nodeID != "" {
		args = append(args, nodeID)
		query += ` AND node_id = $` + strconv.Itoa(len(args))
	}
	query += ` ORDER BY id`
	if limit > 0 {
		args = append(args, limit)
		query += ` LIMIT $` + strconv.Itoa(len(args))
	}
	rows, err := q.db.Query(ctx, query, args...)
	es, err := collect(rows, err, func(row pgx.Row) (store.AuditEntry, error) {
		var e store.AuditEntry
		err := row.Scan(&e.ID, timeCol{&e.At}, &e.TenantID, &e.Actor, &e.Action, &e.NodeID, &e.Result,
			&e.Details, &e.PrevHash, &e.Hash)
		if e.Details == nil {
			e.Details = map[string]string{}
		}
		return e, err
	})
	if err != nil {
		return nil, wrapf(err, "list audit")
	}
	return es, nil
}
