package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// applyRotationSQL calls migration 0010's aegis_apply_rotation: the rotation's six
// writes, each the very statement its single method runs, in one statement that
// raises (SQLSTATE AE001) if any of them would change nothing, so it writes all of
// them or none. Run alone, it is its own transaction: one round trip, which commits.
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

// isServerError: the server answered with an error (the statement failed, the
// connection is fine).
func isServerError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe)
}

// ApplyRotation is the function alone, as a statement of its own. When it raises (a
// write that would change nothing, or a race the statements cannot see, such as a
// unique violation), the statement wrote nothing.
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
