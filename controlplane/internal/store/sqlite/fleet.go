package sqlite

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func (q *queries) InsertFleetRun(ctx context.Context, r store.FleetRun) error {
	n, err := changed(q.w.ExecContext(ctx, `
		INSERT INTO fleet_runs (
		    id, tenant_id, action, target, spec, state, halted_reason, created_by,
		    created_at, finished_at, cancel_requested_at, lease_owner, lease_until)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT DO NOTHING`,
		r.ID, r.TenantID, r.Action, r.Target, r.Spec, r.State, r.HaltedReason, r.CreatedBy,
		micros(r.CreatedAt), micros(r.FinishedAt), micros(r.CancelRequestedAt), r.LeaseOwner, micros(r.LeaseUntil)))
	switch {
	case isForeignKeyViolation(err):
		return wrapf(store.ErrNotFound, "insert fleet run %q: tenant %q", r.ID, r.TenantID)
	case err != nil:
		return wrapf(err, "insert fleet run %q", r.ID)
	case n == 0:
		return wrapf(store.ErrConflict, "insert fleet run %q", r.ID)
	}
	return nil
}

func (q *queries) InsertFleetRunHosts(ctx context.Context, runID string, hosts []store.FleetRunHost) error {
	err := q.atomic(ctx, func(q *queries) error {
		for _, h := range hosts {
			n, err := changed(q.w.ExecContext(ctx, `
				INSERT INTO fleet_run_hosts (
				    run_id, node_id, name, wave, position, state, reason, message, exit_code,
				    start_key_fingerprint, start_token_jti, started_at, finished_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT DO NOTHING`,
				runID, h.NodeID, h.Name, h.Wave, h.Position, h.State, h.Reason, h.Message, h.ExitCode,
				h.StartKeyFingerprint, h.StartTokenJTI, micros(h.StartedAt), micros(h.FinishedAt)))
			switch {
			case isForeignKeyViolation(err):
				return store.ErrNotFound
			case err != nil:
				return err
			case n == 0:
				return wrapf(store.ErrConflict, "host %q", h.NodeID)
			}
		}
		return nil
	})
	if err != nil {
		return wrapf(err, "insert hosts of fleet run %q", runID)
	}
	return nil
}

func (q *queries) AppendFleetRunEvent(ctx context.Context, e store.FleetRunEvent) (store.FleetRunEvent, error) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	// One statement: the single writer connection serializes appenders, so the
	// next number is never taken twice.
	var seq int64
	err := q.w.QueryRowContext(ctx, `
		INSERT INTO fleet_run_events (run_id, sequence, at, kind, data)
		SELECT r.id, coalesce((SELECT max(sequence) FROM fleet_run_events WHERE run_id = r.id), 0) + 1, ?, ?, ?
		FROM fleet_runs AS r WHERE r.id = ?
		RETURNING sequence`,
		micros(e.At), e.Kind, e.Data, e.RunID).Scan(&seq)
	if err != nil {
		return store.FleetRunEvent{}, wrapf(err, "append event to fleet run %q", e.RunID)
	}
	e.Sequence = uint64(seq)
	e.At = microsOf(e.At)
	return e, nil
}
