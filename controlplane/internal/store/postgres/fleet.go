package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

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
		e.RunID, e.At, e.Kind, e.Data).Scan(&seq, sqlstore.TimeCol{T: &e.At})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return store.FleetRunEvent{}, wrapf(store.ErrNotFound, "append event to fleet run %q", e.RunID)
	case err != nil:
		return store.FleetRunEvent{}, wrapf(err, "append event to fleet run %q", e.RunID)
	}
	e.Sequence = uint64(seq)
	return e, nil
}
