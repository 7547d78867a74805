package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

func (q *queries) ListNodeRotations(ctx context.Context, nodeID string) ([]store.Rotation, error) {
	rows, err := q.db.Query(ctx, `
		SELECT rotation_id, node_id, old_fingerprint, new_fingerprint, new_token_jti, new_token, at
		FROM rotations WHERE node_id = $1
		ORDER BY at NULLS FIRST, rotation_id`, nodeID)
	rs, err := collect(rows, err, func(row pgx.Row) (store.Rotation, error) {
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
	err := q.insertForTenant(ctx, r.TenantID, `
		INSERT INTO fleet_runs (
		    id, tenant_id, action, target, spec, state, halted_reason, created_by,
		    created_at, finished_at, cancel_requested_at, lease_owner, lease_until)
		SELECT $1, tenants.id, $3, $4, $5, $6, $7, $8,
		       $9::timestamptz, $10::timestamptz, $11::timestamptz, $12, $13::timestamptz
		FROM tenants WHERE tenants.id = $2
		ON CONFLICT DO NOTHING`,
		r.ID, r.TenantID, r.Action, r.Target, r.Spec, r.State, r.HaltedReason, r.CreatedBy,
		ts(r.CreatedAt), ts(r.FinishedAt), ts(r.CancelRequestedAt), r.LeaseOwner, ts(r.LeaseUntil))
	if err != nil {
		return wrapf(err, "insert fleet run %q", r.ID)
	}
	return nil
}

func tsArg(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

func (q *queries) InsertFleetRunHosts(ctx context.Context, runID string, hosts []store.FleetRunHost) error {
	if len(hosts) == 0 {
		return nil
	}
	// One statement for the whole plan (thousands of hosts): unnest turns the
	// column arrays into rows, and selecting from fleet_runs makes an unknown run
	// insert nothing instead of raising a foreign-key violation.
	cols := struct {
		node, name, state, reason, message, kfp, jti []string
		wave, pos, exit                              []int32
		started, finished                            []pgtype.Timestamptz
	}{}
	for _, h := range hosts {
		cols.node = append(cols.node, h.NodeID)
		cols.name = append(cols.name, h.Name)
		cols.state = append(cols.state, h.State)
		cols.reason = append(cols.reason, h.Reason)
		cols.message = append(cols.message, h.Message)
		cols.kfp = append(cols.kfp, h.StartKeyFingerprint)
		cols.jti = append(cols.jti, h.StartTokenJTI)
		cols.wave = append(cols.wave, int32(h.Wave))
		cols.pos = append(cols.pos, int32(h.Position))
		cols.exit = append(cols.exit, h.ExitCode)
		cols.started = append(cols.started, tsArg(h.StartedAt))
		cols.finished = append(cols.finished, tsArg(h.FinishedAt))
	}
	tag, err := q.db.Exec(ctx, `
		INSERT INTO fleet_run_hosts (
		    run_id, node_id, name, wave, position, state, reason, message, exit_code,
		    start_key_fingerprint, start_token_jti, started_at, finished_at)
		SELECT r.id, h.node_id, h.name, h.wave, h.position, h.state, h.reason, h.message, h.exit_code,
		       h.kfp, h.jti, h.started_at, h.finished_at
		FROM fleet_runs AS r,
		     unnest($2::text[], $3::text[], $4::int[], $5::int[], $6::text[], $7::text[], $8::text[], $9::int[],
		            $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[])
		         AS h(node_id, name, wave, position, state, reason, message, exit_code, kfp, jti, started_at, finished_at)
		WHERE r.id = $1
		ON CONFLICT DO NOTHING`,
		runID, cols.node, cols.name, cols.wave, cols.pos, cols.state, cols.reason, cols.message, cols.exit,
		cols.kfp, cols.jti, cols.started, cols.finished)
	switch {
	case err != nil:
	case tag.RowsAffected() == int64(len(hosts)):
		return nil
	default:
		var exists bool
		if err = q.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM fleet_runs WHERE id = $1)`, runID).Scan(&exists); err == nil {
			err = store.ErrConflict
			if !exists {
				err = store.ErrNotFound
			}
		}
	}
	return wrapf(err, "insert hosts of fleet run %q", runID)
}

const fleetRunColumns = `
	id, tenant_id, action, target, spec, state, halted_reason, created_by,
	created_at, finished_at, cancel_requested_at, lease_owner, lease_until`

func scanFleetRun(row pgx.Row) (store.FleetRun, error) {
	var r store.FleetRun
	err := row.Scan(&r.ID, &r.TenantID, &r.Action, &r.Target, &r.Spec, &r.State, &r.HaltedReason, &r.CreatedBy,
		timeCol{&r.CreatedAt}, timeCol{&r.FinishedAt}, timeCol{&r.CancelRequestedAt}, &r.LeaseOwner, timeCol{&r.LeaseUntil})
	return r, err
}

func (q *queries) GetFleetRun(ctx context.Context, id string) (store.FleetRun, error) {
	r, err := scanFleetRun(q.db.QueryRow(ctx, `SELECT `+fleetRunColumns+` FROM fleet_runs WHERE id = $1`, id))
	if err != nil {
		return store.FleetRun{}, wrapf(err, "get fleet run %q", id)
	}
	return r, nil
}

func (q *queries) ListFleetRuns(ctx context.Context, f store.FleetRunFilter) ([]store.FleetRun, error) {
	rows, err := q.db.Query(ctx, `
		SELECT `+fleetRunColumns+` FROM fleet_runs
		WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR state = $2)
		ORDER BY created_at DESC NULLS LAST, id DESC`,
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

func scanFleetRunHost(row pgx.Row) (store.FleetRunHost, error) {
	var h store.FleetRunHost
	var wave, pos int32
	err := row.Scan(&h.RunID, &h.NodeID, &h.Name, &wave, &pos, &h.State, &h.Reason, &h.Message, &h.ExitCode,
		&h.StartKeyFingerprint, &h.StartTokenJTI, timeCol{&h.StartedAt}, timeCol{&h.FinishedAt})
	h.Wave, h.Position = int(wave), int(pos)
	return h, err
}

func (q *queries) ListFleetRunHosts(ctx context.Context, runID string) ([]store.FleetRunHost, error) {
	rows, err := q.db.Query(ctx, `
		SELECT `+fleetRunHostColumns+` FROM fleet_run_hosts
		WHERE run_id = $1 ORDER BY position, node_id`, runID)
	hs, err := collect(rows, err, scanFleetRunHost)
	if err != nil {
		return nil, wrapf(err, "list hosts of fleet run %q", runID)
	}
	return hs, nil
}

func (q *queries) UpdateFleetRunHost(ctx context.Context, h store.FleetRunHost, from string) error {
	tag, err := q.db.Exec(ctx, `
		UPDATE fleet_run_hosts
		SET state = $1, reason = $2, message = $3, exit_code = $4,
		    start_key_fingerprint = $5, start_token_jti = $6, started_at = $7, finished_at = $8
		WHERE run_id = $9 AND node_id = $10 AND state = $11`,
		h.State, h.Reason, h.Message, h.ExitCode, h.StartKeyFingerprint, h.StartTokenJTI,
		ts(h.StartedAt), ts(h.FinishedAt), h.RunID, h.NodeID, from)
	if err == nil && tag.RowsAffected() == 0 {
		var exists bool
		if err = q.db.QueryRow(ctx,
			`SELECT EXISTS (SELECT 1 FROM fleet_run_hosts WHERE run_id = $1 AND node_id = $2)`, h.RunID, h.NodeID).Scan(&exists); err == nil {
			err = wrapf(store.ErrConflict, "host is no longer %s", from)
			if !exists {
				err = store.ErrNotFound
			}
		}
	}
	if err != nil {
		return wrapf(err, "update host %q of fleet run %q", h.NodeID, h.RunID)
	}
	return nil
}

// runCAS runs an UPDATE of one running run; no row changed is ErrConflict when the
// run exists and ErrNotFound when it does not.
func (q *queries) runCAS(ctx context.Context, id, what, query string, args ...any) error {
	tag, err := q.db.Exec(ctx, query, args...)
	if err == nil && tag.RowsAffected() == 0 {
		var exists bool
		if err = q.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM fleet_runs WHERE id = $1)`, id).Scan(&exists); err == nil {
			err = store.ErrConflict
			if !exists {
				err = store.ErrNotFound
			}
		}
	}
	if err != nil {
		return wrapf(err, what, id)
	}
	return nil
}

func (q *queries) FinishFleetRun(ctx context.Context, id, state, haltedReason string, at time.Time) error {
	return q.runCAS(ctx, id, "finish fleet run %q", `
		UPDATE fleet_runs
		SET state = $1, halted_reason = $2, finished_at = $3, lease_owner = '', lease_until = NULL
		WHERE id = $4 AND state = 'running'`,
		state, haltedReason, ts(at), id)
}

func (q *queries) RequestFleetRunCancel(ctx context.Context, id string, at time.Time) error {
	return q.runCAS(ctx, id, "cancel fleet run %q", `
		UPDATE fleet_runs SET cancel_requested_at = coalesce(cancel_requested_at, $1)
		WHERE id = $2 AND state = 'running'`,
		ts(at), id)
}

func (q *queries) AcquireFleetRunLease(ctx context.Context, id, owner string, now, until time.Time) error {
	return q.runCAS(ctx, id, "lease fleet run %q", `
		UPDATE fleet_runs SET lease_owner = $1, lease_until = $2
		WHERE id = $3 AND state = 'running'
		  AND (lease_owner = '' OR lease_owner = $1 OR lease_until IS NULL OR lease_until <= $4)`,
		owner, ts(until), id, ts(now))
}

func (q *queries) ReleaseFleetRunLease(ctx context.Context, id, owner string) error {
	_, err := q.db.Exec(ctx, `
		UPDATE fleet_runs SET lease_owner = '', lease_until = NULL
		WHERE id = $1 AND lease_owner = $2`, id, owner)
	if err != nil {
		return wrapf(err, "release lease of fleet run %q", id)
	}
	return nil
}

// AppendFleetRunEvent takes the next number from the run's counter: the UPDATE locks
// the run's row until the caller's transaction ends, so concurrent appenders to one
// run wait their turn instead of failing, and numbers commit (and become visible to
// watchers paging with "sequence > the last one I saw") in order.
func (q *queries) AppendFleetRunEvent(ctx context.Context, e store.FleetRunEvent) (store.FleetRunEvent, error) {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	var seq int64
	err := q.db.QueryRow(ctx, `
		WITH next AS (
		    UPDATE fleet_runs SET event_seq = event_seq + 1 WHERE id = $1 RETURNING id, event_seq
		)
		INSERT INTO fleet_run_events (run_id, sequence, at, kind, data)
		SELECT next.id, next.event_seq, $2::timestamptz, $3, $4 FROM next
		RETURNING sequence, at`,
		e.RunID, e.At, e.Kind, e.Data).Scan(&seq, timeCol{&e.At})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return store.FleetRunEvent{}, wrapf(store.ErrNotFound, "append event to fleet run %q", e.RunID)
	case err != nil:
		return store.FleetRunEvent{}, wrapf(err, "append event to fleet run %q", e.RunID)
	}
	e.Sequence = uint64(seq)
	return e, nil
}

func (q *queries) ListFleetRunEvents(ctx context.Context, runID string, after uint64) ([]store.FleetRunEvent, error) {
	rows, err := q.db.Query(ctx, `
		SELECT run_id, sequence, at, kind, data FROM fleet_run_events
		WHERE run_id = $1 AND sequence > $2 ORDER BY sequence`, runID, int64(after))
	es, err := collect(rows, err, func(row pgx.Row) (store.FleetRunEvent, error) {
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
