package sqlite

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func (q *queries) ListNodeRotations(ctx context.Context, nodeID string) ([]store.Rotation, error) {
	rows, err := q.r.QueryContext(ctx, `
		SELECT rotation_id, node_id, old_fingerprint, new_fingerprint, new_token_jti, new_token, at
		FROM rotations WHERE node_id = ?
		ORDER BY at, rotation_id`, nodeID)
	rs, err := collect(rows, err, func(row scanner) (store.Rotation, error) {
		var r store.Rotation
		err := row.Scan(&r.RotationID, &r.NodeID, &r.OldFingerprint, &r.NewFingerprint, &r.NewTokenJTI, &r.NewToken, timeCol{&r.At})
		return r, err
	})
	if err != nil {
		return nil, wrapf(err, "list rotations of %q", nodeID)
	}
	return rs, nil
}

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

const fleetRunColumns = `
	id, tenant_id, action, target, spec, state, halted_reason, created_by,
	created_at, finished_at, cancel_requested_at, lease_owner, lease_until`

func scanFleetRun(row scanner) (store.FleetRun, error) {
	var r store.FleetRun
	err := row.Scan(&r.ID, &r.TenantID, &r.Action, &r.Target, &r.Spec, &r.State, &r.HaltedReason, &r.CreatedBy,
		timeCol{&r.CreatedAt}, timeCol{&r.FinishedAt}, timeCol{&r.CancelRequestedAt}, &r.LeaseOwner, timeCol{&r.LeaseUntil})
	return r, err
}

func (q *queries) GetFleetRun(ctx context.Context, id string) (store.FleetRun, error) {
	r, err := scanFleetRun(q.r.QueryRowContext(ctx, `SELECT `+fleetRunColumns+` FROM fleet_runs WHERE id = ?`, id))
	if err != nil {
		return store.FleetRun{}, wrapf(err, "get fleet run %q", id)
	}
	return r, nil
}

func (q *queries) ListFleetRuns(ctx context.Context, f store.FleetRunFilter) ([]store.FleetRun, error) {
	rows, err := q.r.QueryContext(ctx, `
		SELECT `+fleetRunColumns+` FROM fleet_runs
		WHERE (?1 = '' OR tenant_id = ?1) AND (?2 = '' OR state = ?2)
		ORDER BY created_at DESC, id DESC`,
		f.TenantID, f.State)
	rs, err := collect(rows, err, scanFleetRun)
	if err != nil {
		return nil, wrapf(err, "list fleet runs")
	}
	return rs, nil
}

const fleetRunHostColumns = `
	run_id, node_id, name, wave, position, state, reason, message, exit_code,
	start_key_fingerprint, start_token_jti, started_at, finished_at`

func scanFleetRunHost(row scanner) (store.FleetRunHost, error) {
	var h store.FleetRunHost
	err := row.Scan(&h.RunID, &h.NodeID, &h.Name, &h.Wave, &h.Position, &h.State, &h.Reason, &h.Message, &h.ExitCode,
		&h.StartKeyFingerprint, &h.StartTokenJTI, timeCol{&h.StartedAt}, timeCol{&h.FinishedAt})
	return h, err
}

func (q *queries) ListFleetRunHosts(ctx context.Context, runID string) ([]store.FleetRunHost, error) {
	rows, err := q.r.QueryContext(ctx, `
		SELECT `+fleetRunHostColumns+` FROM fleet_run_hosts
		WHERE run_id = ? ORDER BY position, node_id`, runID)
	hs, err := collect(rows, err, scanFleetRunHost)
	if err != nil {
		return nil, wrapf(err, "list hosts of fleet run %q", runID)
	}
	return hs, nil
}

func (q *queries) UpdateFleetRunHost(ctx context.Context, h store.FleetRunHost, from string) error {
	err := q.atomic(ctx, func(q *queries) error {
		n, err := changed(q.w.ExecContext(ctx, `
			UPDATE fleet_run_hosts
			SET state = ?, reason = ?, message = ?, exit_code = ?,
			    start_key_fingerprint = ?, start_token_jti = ?, started_at = ?, finished_at = ?
			WHERE run_id = ? AND node_id = ? AND state = ?`,
			h.State, h.Reason, h.Message, h.ExitCode, h.StartKeyFingerprint, h.StartTokenJTI,
			micros(h.StartedAt), micros(h.FinishedAt), h.RunID, h.NodeID, from))
		if err != nil || n == 1 {
			return err
		}
		var exists bool
		if err := q.w.QueryRowContext(ctx,
			`SELECT EXISTS (SELECT 1 FROM fleet_run_hosts WHERE run_id = ? AND node_id = ?)`, h.RunID, h.NodeID).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return store.ErrNotFound
		}
		return wrapf(store.ErrConflict, "host is no longer %s", from)
	})
	if err != nil {
		return wrapf(err, "update host %q of fleet run %q", h.NodeID, h.RunID)
	}
	return nil
}

// runCAS runs an UPDATE of one running run; no row changed is ErrConflict when the
// run exists and ErrNotFound when it does not.
func (q *queries) runCAS(ctx context.Context, id, what, query string, args ...any) error {
	err := q.atomic(ctx, func(q *queries) error {
		n, err := changed(q.w.ExecContext(ctx, query, args...))
		if err != nil || n == 1 {
			return err
		}
		var exists bool
		if err := q.w.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM fleet_runs WHERE id = ?)`, id).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return store.ErrNotFound
		}
		return store.ErrConflict
	})
	if err != nil {
		return wrapf(err, what, id)
	}
	return nil
}

func (q *queries) FinishFleetRun(ctx context.Context, id, state, haltedReason string, at time.Time) error {
	return q.runCAS(ctx, id, "finish fleet run %q", `
		UPDATE fleet_runs
		SET state = ?, halted_reason = ?, finished_at = ?, lease_owner = '', lease_until = NULL
		WHERE id = ? AND state = 'running'`,
		state, haltedReason, micros(at), id)
}

func (q *queries) RequestFleetRunCancel(ctx context.Context, id string, at time.Time) error {
	return q.runCAS(ctx, id, "cancel fleet run %q", `
		UPDATE fleet_runs SET cancel_requested_at = coalesce(cancel_requested_at, ?)
		WHERE id = ? AND state = 'running'`,
		micros(at), id)
}

func (q *queries) AcquireFleetRunLease(ctx context.Context, id, owner string, now, until time.Time) error {
	return q.runCAS(ctx, id, "lease fleet run %q", `
		UPDATE fleet_runs SET lease_owner = ?1, lease_until = ?2
		WHERE id = ?3 AND state = 'running'
		  AND (lease_owner = '' OR lease_owner = ?1 OR lease_until IS NULL OR lease_until <= ?4)`,
		owner, micros(until), id, micros(now))
}

func (q *queries) ReleaseFleetRunLease(ctx context.Context, id, owner string) error {
	_, err := q.w.ExecContext(ctx, `
		UPDATE fleet_runs SET lease_owner = '', lease_until = NULL
		WHERE id = ? AND lease_owner = ?`, id, owner)
	if err != nil {
		return wrapf(err, "release lease of fleet run %q", id)
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

func (q *queries) ListFleetRunEvents(ctx context.Context, runID string, after uint64) ([]store.FleetRunEvent, error) {
	rows, err := q.r.QueryContext(ctx, `
		SELECT run_id, sequence, at, kind, data FROM fleet_run_events
		WHERE run_id = ? AND sequence > ? ORDER BY sequence`, runID, int64(after))
	es, err := collect(rows, err, func(row scanner) (store.FleetRunEvent, error) {
		var e store.FleetRunEvent
		var seq int64
		err := row.Scan(&e.RunID, &seq, timeCol{&e.At}, &e.Kind, &e.Data)
		e.Sequence = uint64(seq)
		return e, err
	})
	if err != nil {
		return nil, wrapf(err, "list events of fleet run %q", runID)
	}
	return es, nil
}
