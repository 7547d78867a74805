package sqlite

import (
	"context"
	"errors"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// errNotApplied rolls back ApplyRotation's transaction.
var errNotApplied = errors.New("rotation not applied")

// ApplyRotation makes the writes one by one in a transaction of the group commit
// (statements cost no round trip here), which is rolled back if any fails, so that
// nothing of a rotation that does not apply is written.
func (s *Store) ApplyRotation(ctx context.Context, w store.RotationWrite) (bool, error) {
	err := s.atomic(ctx, func(q *queries) error {
		if err := q.applyRotation(ctx, w); err != nil {
			return errNotApplied
		}
		return nil
	})
	switch {
	case errors.Is(err, errNotApplied):
		return false, nil
	case err != nil:
		return false, wrapf(err, "apply rotation %q", w.Rotation.RotationID)
	}
	return true, nil
}

// applyRotation stops at the first write that fails; the caller undoes the rest.
func (q *queries) applyRotation(ctx context.Context, w store.RotationWrite) error {
	if err := q.ClaimPublicKey(ctx, w.NewKey, w.NodeID, w.At); err != nil {
		return err
	}
	if err := q.SwapDaemonKey(ctx, w.NodeID, w.OldKey, w.NewKey, w.OverlapUntil, w.At); err != nil {
		return err
	}
	if err := q.BlacklistToken(ctx, w.Blacklist); err != nil {
		return err
	}
	if err := q.InsertNodeToken(ctx, w.Token); err != nil {
		return err
	}
	if err := q.InsertRotation(ctx, w.Rotation); err != nil {
		return err
	}
	_, err := q.AppendAudit(ctx, w.Audit)
	return err
}
