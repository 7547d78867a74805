package postgres

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// auditLockKey names the advisory lock every AppendAudit holds until its transaction
// ends. Readers page through the log with "id > the last id I saw"; identity values
// are handed out at insert time, so without the lock a transaction holding id 7 could
// commit after one holding id 8, and a reader that had already seen 8 would never see
// 7. With it, ids become visible in order. The cost: audited transactions finish one
// at a time from their AppendAudit on, so AppendAudit belongs at the end of a
// transaction (where the domain puts it), not before slow work or further row locks.
const auditLockKey int64 = 0x6165676973_02 // "aegis", 2

func (q *queries) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	if e.Details == nil {
		e.Details = map[string]string{}
	}
	// The CTE takes the lock before the row, and with it the id, is made; one
	// statement, so it also works outside InTx. RETURNING at gives back exactly what
	// a later ListAudit reads (microseconds, UTC).
	err := q.db.QueryRow(ctx, `
		WITH ordered AS (SELECT pg_advisory_xact_lock($10))
		INSERT INTO audit_log (at, tenant_id, actor, action, node_id, result, details, prev_hash, hash)
		SELECT $1::timestamptz, $2, $3, $4, $5, $6, $7::jsonb, $8, $9
		FROM ordered
		RETURNING id, at`,
		e.At, e.TenantID, e.Actor, e.Action, e.NodeID, e.Result, e.Details, e.PrevHash, e.Hash,
		auditLockKey).Scan(&e.ID, timeCol{&e.At})
	if err != nil {
		return store.AuditEntry{}, wrapf(err, "append audit")
	}
	return e, nil
}

// ListAudit: limit <= 0 means no limit.
func (q *queries) ListAudit(ctx context.Context, tenantID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	query := `
		SELECT id, at, tenant_id, actor, action, node_id, result, details, prev_hash, hash
		FROM audit_log
		WHERE id > $1`
	args := []any{afterID}
	if tenantID != "" {
		args = append(args, tenantID)
		query += ` AND tenant_id = $` + strconv.Itoa(len(args))
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
