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

// ApplyRotation sends a rotation's six writes as one pgx Batch: one round trip
// instead of six, each statement the very text its single method runs. They run
// inside a savepoint, so that when one of them changes nothing (a claimed key, a
// lost swap, a rotation id already recorded) or raises (a race the statements cannot
// see), rolling back to it undoes the others and leaves the transaction usable; the
// caller then makes the writes one at a time to learn why. The savepoint is not
// released on success: the commit ends it.
func (q *queries) ApplyRotation(ctx context.Context, w store.RotationWrite) (bool, error) {
	e := pendingAudit(w.Audit)
	b := &pgx.Batch{}
	b.Queue(`SAVEPOINT apply_rotation`)
	b.Queue(sqlstore.ClaimKeySQL, sqlstore.Bytes(w.NewKey), w.NodeID, ts(w.At))
	b.Queue(swapKeySQL, sqlstore.Bytes(w.NewKey), sqlstore.Bytes(w.OldKey), ts(w.OverlapUntil), ts(w.At), w.NodeID)
	b.Queue(sqlstore.BlacklistSQL, dialect.BlacklistArgs(w.Blacklist)...)
	b.Queue(sqlstore.InsertNodeTokenSQL, dialect.NodeTokenArgs(w.Token)...)
	b.Queue(sqlstore.InsertRotationSQL, dialect.RotationArgs(w.Rotation)...)
	b.Queue(appendAuditSQL, pendingAuditArgs(e)...)

	br := q.db.SendBatch(ctx, b)
	applied, pid, err := readRotationBatch(br)
	if cerr := br.Close(); err == nil && !isServerError(cerr) {
		err = cerr
	}
	if err != nil {
		return false, wrapf(err, "apply rotation %q", w.Rotation.RotationID)
	}
	if applied {
		q.appendedAudit = pid
		return true, nil
	}
	if _, err := q.db.Exec(ctx, `ROLLBACK TO SAVEPOINT apply_rotation`); err != nil {
		return false, wrapf(err, "apply rotation %q: roll back", w.Rotation.RotationID)
	}
	return false, nil
}

// readRotationBatch reads the batch's results in order. An error the server raised
// (it aborts the rest of the batch) is a write that did not apply, not a failure:
// the savepoint undoes it. Any other error (the connection) is returned.
func readRotationBatch(br pgx.BatchResults) (applied bool, pid int64, err error) {
	applied = true
	// SAVEPOINT, claim, swap, blacklist (ON CONFLICT: 0 rows is the first entry
	// winning, not a failure), token, rotation.
	mustChange := []bool{false, true, true, false, true, true}
	for _, must := range mustChange {
		tag, err := br.Exec()
		switch {
		case isServerError(err):
			return false, 0, nil
		case err != nil:
			return false, 0, err
		case must && tag.RowsAffected() != 1:
			applied = false
		}
	}
	switch err := br.QueryRow().Scan(&pid); {
	case isServerError(err):
		return false, 0, nil
	case err != nil:
		return false, 0, err
	}
	return applied, pid, nil
}

// isServerError: the server answered with an error (the statement failed, the
// connection is fine).
func isServerError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe)
}

// ApplyRotation outside InTx runs in a transaction of its own: all or nothing.
func (s *Store) ApplyRotation(ctx context.Context, w store.RotationWrite) (applied bool, err error) {
	err = s.InTx(ctx, func(tx store.Tx) error {
		applied, err = tx.ApplyRotation(ctx, w)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("postgres: %w", err)
	}
	return applied, nil
}
