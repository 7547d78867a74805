package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// applyRotationSQL calls migration 0010's aegis_apply_rotation: the rotation's six
// writes, each the very statement its single method runs, in one statement that
// raises (SQLSTATE AE001) if any of them would change nothing, so it writes all of
// them or none.
const applyRotationSQL = `SELECT aegis_apply_rotation($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
	$11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29::jsonb)`

func applyRotationArgs(w store.RotationWrite) []any {
	args := make([]any, 0, 29)
	args = append(args, sqlstore.Bytes(w.NewKey), w.NodeID, ts(w.At), sqlstore.Bytes(w.OldKey), ts(w.OverlapUntil))
	args = append(args, dialect.BlacklistArgs(w.Blacklist)...)
	args = append(args, dialect.NodeTokenArgs(w.Token)...)
	args = append(args, dialect.RotationArgs(w.Rotation)...)
	return append(args, pendingAuditArgs(pendingAudit(w.Audit))...)
}

// ApplyRotation inside a transaction calls the function under a savepoint, both in
// one round trip: when the function raises (a write that would change nothing, or a
// race the statements cannot see), rolling back to the savepoint leaves the
// transaction usable, and the caller makes the writes one at a time to learn why.
// The savepoint is not released on success: the commit ends it.
func (q *queries) ApplyRotation(ctx context.Context, w store.RotationWrite) (bool, error) {
	b := &pgx.Batch{}
	b.Queue(`SAVEPOINT apply_rotation`)
	b.Queue(applyRotationSQL, applyRotationArgs(w)...)
	br := q.db.SendBatch(ctx, b)
	var pid int64
	_, err := br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&pid)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	switch {
	case err == nil:
		q.appendedAudit = pid
		return true, nil
	case !isServerError(err):
		return false, wrapf(err, "apply rotation %q", w.Rotation.RotationID)
	}
	if _, err := q.db.Exec(ctx, `ROLLBACK TO SAVEPOINT apply_rotation`); err != nil {
		return false, wrapf(err, "apply rotation %q: roll back", w.Rotation.RotationID)
	}
	return false, nil
}

// isServerError: the server answered with an error (the statement failed, the
// connection is fine).
func isServerError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe)
}

// ApplyRotation outside InTx is the function alone, as a statement of its own: one
// round trip, which commits. When it raises, the statement wrote nothing.
func (s *Store) ApplyRotation(ctx context.Context, w store.RotationWrite) (bool, error) {
	var pid int64
	switch err := s.pool.QueryRow(ctx, applyRotationSQL, applyRotationArgs(w)...).Scan(&pid); {
	case isServerError(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("postgres: %w", wrapf(err, "apply rotation %q", w.Rotation.RotationID))
	}
	s.woke()
	return true, nil
}
