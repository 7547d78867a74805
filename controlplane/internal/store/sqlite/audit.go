package sqlite

import (
	"context"
	"encoding/json"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func (q *queries) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	// Return exactly what a later ListAudit will read back.
	e.At = microsOf(e.At)
	if e.Details == nil {
		e.Details = map[string]string{}
	}
	details, err := json.Marshal(e.Details)
	if err != nil {
		return store.AuditEntry{}, wrapf(err, "append audit")
	}
	err = q.w.QueryRowContext(ctx, `
		INSERT INTO audit_log (at, tenant_id, actor, action, node_id, result, details, prev_hash, hash)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		RETURNING id`,
		micros(e.At), e.TenantID, e.Actor, e.Action, e.NodeID, e.Result, string(details), e.PrevHash, e.Hash).Scan(&e.ID)
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
		WHERE id > ?`
	args := []any{afterID}
	if tenantID != "" {
		query += ` AND tenant_id = ?`
		args = append(args, tenantID)
	}
	query += ` ORDER BY id`
	if limit > 0 {
		query += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := q.r.QueryContext(ctx, query, args...)
	es, err := collect(rows, err, func(row scanner) (store.AuditEntry, error) {
		var e store.AuditEntry
		err := row.Scan(&e.ID, timeCol{&e.At}, &e.TenantID, &e.Actor, &e.Action, &e.NodeID, &e.Result,
			detailsCol{&e.Details}, &e.PrevHash, &e.Hash)
		return e, err
	})
	if err != nil {
		return nil, wrapf(err, "list audit")
	}
	return es, nil
}
