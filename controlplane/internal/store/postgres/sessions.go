package postgres

import (
	"context"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/jackc/pgx/v5/pgtype"
)

// KeepSessions implements store.Tx, in one statement for all of the replica's
// streams.
func (q *queries) KeepSessions(ctx context.Context, replica string, live []store.LiveSession) (int, error) {
	if len(live) == 0 {
		return 0, nil
	}
	nodes := make([]string, len(live))
	sessions := make([]string, len(live))
	since := make([]pgtype.Timestamptz, len(live))
	for i, l := range live {
		nodes[i], sessions[i], since[i] = l.NodeID, l.SessionID, tsArg(l.Since)
	}
	tag, err := q.db.Exec(ctx, `
		UPDATE edge_daemons AS d
		SET session_id = l.session_id, session_replica = $4, session_since = l.since
		FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS l(node_id, session_id, since)
		WHERE d.node_id = l.node_id
		  AND NOT (d.session_id = l.session_id AND d.session_replica = $4)
		  AND (d.session_id = '' OR d.session_since IS NULL OR d.session_since <= l.since)`,
		nodes, sessions, since, replica)
	if err != nil {
		return 0, wrapf(err, "keep sessions of replica %q", replica)
	}
	return int(tag.RowsAffected()), nil
}
