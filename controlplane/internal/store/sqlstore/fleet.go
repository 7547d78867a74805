package sqlstore

import (
	"context"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// InsertFleetRun, InsertFleetRunHosts and AppendFleetRunEvent stay in each store:
// PostgreSQL inserts hosts in one unnest statement and numbers events from a
// counter on the run's row; SQLite's single writer needs neither.

func (q Queries) ListNodeRotations(ctx context.Context, nodeID string) ([]store.Rotation, error) {
	rows, err := q.read(ctx, `
		SELECT rotation_id, node_id, old_fingerprint, new_fingerprint, new_token_jti, new_token, at
		FROM rotations WHERE node_id = $1
		ORDER BY at NULLS FIRST, rotation_id`, nodeID)
	rs, err := Collect(rows, err, func(row Row) (store.Rotation, error) {
		var r store.Rotation
		err := row.Scan(&r.RotationID, &r.NodeID, &r.OldFingerprint, &r.NewFingerprint, &r.NewTokenJTI, &r.NewToken, TimeCol{&r.At})
		return r, err
	})
	if err != nil {
		return nil, q.wrapf(err, "list rotations of %q", nodeID)
	}
	return rs, nil
}

const fleetRunColumns = `
	id, tenant_id, action, target, spec, state, halted_reason, created_by,
	created_at, finished_at, cancel_requested_at, lease_owner, lease_until`

func scanFleetRun(row Row) (store.FleetRun, error) {
	var r store.FleetRun
	err := row.Scan(&r.ID, &r.TenantID, &r.Action, &r.Target, &r.Spec, &r.State, &r.HaltedReason, &r.CreatedBy,
		TimeCol{&r.CreatedAt}, TimeCol{&r.FinishedAt}, TimeCol{&r.CancelRequestedAt}, &r.LeaseOwner, TimeCol{&r.LeaseUntil})
	return r, err
}

func (q Queries) GetFleetRun(ctx context.Context, id string) (store.FleetRun, error) {
	r, err := scanFleetRun(q.readRow(ctx, `SELECT `+fleetRunColumns+` FROM fleet_runs WHERE id = $1`, id))
	if err != nil {
		return store.FleetRun{}, q.wrapf(err, "get fleet run %q", id)
	}
	return r, nil
}

func (q Queries) ListFleetRuns(ctx context.Context, f store.FleetRunFilter) ([]store.FleetRun, error) {
	rows, err := q.read(ctx, `
		SELECT `+fleetRunColumns+` FROM fleet_runs
		WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR state = $2)
		ORDER BY created_at DESC NULLS LAST, id DESC`,
		f.TenantID, f.State)
	rs, err := Collect(rows, err, scanFleetRun)
	if err != nil {
		return nil, q.wrapf(err, "list fleet runs")
	}
	return rs, nil
}

const fleetRunHostColumns = `
	run_id, node_id, name, wave, position, state, reason, message, exit_code,
	start_key_fingerprint, start_token_jti, started_at, finished_at`

func scanFleetRunHost(row Row) (store.FleetRunHost, error) {
	var h store.FleetRunHost
	var wave, pos int64
	err := row.Scan(&h.RunID, &h.NodeID, &h.Name, &wave, &pos, &h.State, &h.Reason, &h.Message, &h.ExitCode,
		&h.StartKeyFingerprint, &h.StartTokenJTI, TimeCol{&h.StartedAt}, TimeCol{&h.FinishedAt})
	h.Wave, h.Position = int(wave), int(pos)
	return h, err
}

func (q Queries) ListFleetRunHosts(ctx context.Context, runID string) ([]store.FleetRunHost, error) {
	rows, err := q.read(ctx, `
		SELECT `+fleetRunHostColumns+` FROM fleet_run_hosts
		WHERE run_id = $1 ORDER BY position, node_id`, runID)
	hs, err := Collect(rows, err, scanFleetRunHost)
	if err != nil {
		return nil, q.wrapf(err, "list hosts of fleet run %q", runID)
	}
	return hs, nil
}

func (q Queries) UpdateFleetRunHost(ctx context.Context, h store.FleetRunHost, from string) error {
	err := q.atomic(ctx, func(q Queries) error {
		n, err := q.exec(ctx, `
			UPDATE fleet_run_hosts
			SET state = $1, reason = $2, message = $3, exit_code = $4,
			    start_key_fingerprint = $5, start_token_jti = $6, started_at = $7, finished_at = $8
			WHERE run_id = $9 AND node_id = $10 AND state = $11`,
			h.State, h.Reason, h.Message, h.ExitCode, h.StartKeyFingerprint, h.StartTokenJTI,
			q.D.Time(h.StartedAt), q.D.Time(h.FinishedAt), h.RunID, h.NodeID, from)
		if err != nil || n == 1 {
			return err
		}
		// Lost: say why, in a statement that sees the winner's commit.
		var exists bool
		if err := q.writeRow(ctx,
			`SELECT EXISTS (SELECT 1 FROM fleet_run_hosts WHERE run_id = $1 AND node_id = $2)`, h.RunID, h.NodeID).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return store.ErrNotFound
		}
		return q.wrapf(store.ErrConflict, "host is no longer %s", from)
	})
	if err != nil {
		return q.wrapf(err, "update host %q of fleet run %q", h.NodeID, h.RunID)
	}
	return nil
}

// runCAS runs an UPDATE of one running run; no row changed is ErrConflict when the
// run exists and ErrNotFound when it does not.
func (q Queries) runCAS(ctx context.Context, id, what, query string, args ...any) error {
	err := q.atomic(ctx, func(q Queries) error {
		n, err := q.exec(ctx, query, args...)
		if err != nil || n == 1 {
			return err
		}
		var exists bool
		if err := q.writeRow(ctx, `SELECT EXISTS (SELECT 1 FROM fleet_runs WHERE id = $1)`, id).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return store.ErrNotFound
		}
		return store.ErrConflict
	})
	if err != nil {
		return q.wrapf(err, what, id)
	}
	return nil
}

func (q Queries) FinishFleetRun(ctx context.Context, id, state, haltedReason string, at time.Time) error {
	return q.runCAS(ctx, id, "finish fleet run %q", `
		UPDATE fleet_runs
		SET state = $1, halted_reason = $2, finished_at = $3, lease_owner = '', lease_until = NULL
		WHERE id = $4 AND state = 'running'`,
		state, haltedReason, q.D.Time(at), id)
}

func (q Queries) RequestFleetRunCancel(ctx context.Context, id string, at time.Time) error {
	return q.runCAS(ctx, id, "cancel fleet run %q", `
		UPDATE fleet_runs SET cancel_requested_at = coalesce(cancel_requested_at, $1)
		WHERE id = $2 AND state = 'running'`,
		q.D.Time(at), id)
}

func (q Queries) AcquireFleetRunLease(ctx context.Context, id, owner string, now, until time.Time) error {
	return q.runCAS(ctx, id, "lease fleet run %q", `
		UPDATE fleet_runs SET lease_owner = $1, lease_until = $2
		WHERE id = $3 AND state = 'running'
		  AND (lease_owner = '' OR lease_owner = $1 OR lease_until IS NULL OR lease_until <= $4)`,
		owner, q.D.Time(until), id, q.D.Time(now))
}

func (q Queries) ReleaseFleetRunLease(ctx context.Context, id, owner string) error {
	_, err := q.exec(ctx, `
		UPDATE fleet_runs SET lease_owner = '', lease_until = NULL
		WHERE id = $1 AND lease_owner = $2`, id, owner)
	if err != nil {
		return q.wrapf(err, "release lease of fleet run %q", id)
	}
	return nil
}

func (q Queries) ListFleetRunEvents(ctx context.Context, runID string, after uint64) ([]store.FleetRunEvent, error) {
	rows, err := q.read(ctx, `
		SELECT run_id, sequence, at, kind, data FROM fleet_run_events
		WHERE run_id = $1 AND sequence > $2 ORDER BY sequence`, runID, int64(after))
	es, err := Collect(rows, err, func(row Row) (store.FleetRunEvent, error) {
		var e store.FleetRunEvent
		var seq int64
		err := row.Scan(&e.RunID, &seq, TimeCol{&e.At}, &e.Kind, &e.Data)
		e.Sequence = uint64(seq)
		return e, err
	})
	if err != nil {
		return nil, q.wrapf(err, "list events of fleet run %q", runID)
	}
	return es, nil
}
