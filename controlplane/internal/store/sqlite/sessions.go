package sqlite

import (
	"context"
	"encoding/json"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// KeepSessions implements store.Tx in one statement (one trip through the writer,
// however many streams the replica holds): the live streams travel as a JSON
// array joined with json_each.
func (q *queries) KeepSessions(ctx context.Context, replica string, live []store.LiveSession) (int, error) {
	if len(live) == 0 {
		return 0, nil
	}
	type row struct {
		Node    string `json:"n"`
		Session string `json:"s"`
		Since   any    `json:"t"`
	}
	rows := make([]row, len(live))
	for i, l := range live {
		rows[i] = row{l.NodeID, l.SessionID, micros(l.Since)}
	}
	b, err := json.Marshal(rows)
	if err != nil {
		return 0, err
	}
	n, err := changed(q.w.ExecContext(ctx, `
		UPDATE edge_daemons
		SET session_id = l.session_id, session_replica = ?1, session_since = l.since
		FROM (SELECT json_extract(value, '$.n') AS node_id,
		             json_extract(value, '$.s') AS session_id,
		             json_extract(value, '$.t') AS since
		      FROM json_each(?2)) AS l
		WHERE edge_daemons.node_id = l.node_id
		  AND NOT (edge_daemons.session_id = l.session_id AND edge_daemons.session_replica = ?1)
		  AND (edge_daemons.session_id = '' OR edge_daemons.session_since IS NULL
		       OR edge_daemons.session_since <= l.since)`,
		replica, string(b)))
	if err != nil {
		return 0, wrapf(err, "keep sessions of replica %q", replica)
	}
	return int(n), nil
}
