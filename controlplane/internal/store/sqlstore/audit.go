package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Appending to the chain stays in each store: PostgreSQL seals entries after the
// commit (its audit sealer), SQLite's single writer seals them at once.

// ListAudit: limit <= 0 means no limit. On PostgreSQL, inside a transaction, it
// lists the sealed entries (Store.ListAudit seals first).
func (q Queries) ListAudit(ctx context.Context, tenantID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	return q.listAudit(ctx, tenantID, "", afterID, limit)
}

func (q Queries) ListNodeAudit(ctx context.Context, tenantID, nodeID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	if nodeID == "" {
		return []store.AuditEntry{}, nil
	}
	return q.listAudit(ctx, tenantID, nodeID, afterID, limit)
}

// listAudit: "" filters nothing; limit <= 0 means no limit.
func (q Queries) listAudit(ctx context.Context, tenantID, nodeID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	query := `WHERE id > $1`
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
	es, err := q.ScanAudit(ctx, query, args...)
	if err != nil {
		return nil, q.wrapf(err, "list audit")
	}
	return es, nil
}

// ScanAudit reads chain entries; where is the query's WHERE clause onwards.
func (q Queries) ScanAudit(ctx context.Context, where string, args ...any) ([]store.AuditEntry, error) {
	rows, err := q.read(ctx, `
		SELECT id, at, tenant_id, actor, action, node_id, result, details, prev_hash, hash
		FROM audit_log `+where, args...)
	return Collect(rows, err, func(row Row) (store.AuditEntry, error) {
		var e store.AuditEntry
		err := row.Scan(&e.ID, TimeCol{&e.At}, &e.TenantID, &e.Actor, &e.Action, &e.NodeID, &e.Result,
			DetailsCol{&e.Details}, &e.PrevHash, &e.Hash)
		return e, err
	})
}

// DetailsCol scans a JSON object column (jsonb, or TEXT on SQLite); the result is
// never nil.
type DetailsCol struct{ M *map[string]string }

func (c DetailsCol) Scan(v any) error {
	m := map[string]string{}
	var err error
	switch v := v.(type) {
	case string:
		err = json.Unmarshal([]byte(v), &m)
	case []byte:
		err = json.Unmarshal(v, &m)
	default:
		return fmt.Errorf("JSON column holds %T", v)
	}
	if m == nil { // the column held JSON null
		m = map[string]string{}
	}
	*c.M = m
	return err
}
