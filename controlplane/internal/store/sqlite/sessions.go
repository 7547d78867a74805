package sqlite

import (
	"context"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// KeepSessions implements store.Tx.
func (q *queries) KeepSessions(ctx context.Context, replica string, live []store.LiveSession) (int, error) {
	total := 0
	for _, l := range live {
		n, err := changed(q.w.ExecContext(ctx, `
			UPDATE edge_daemons SET session_id = ?, session_replica = ?, session_since = ?
			WHERE node_id = ?
			  AND NOT (session_id = ? AND session_replica = ?)
			  AND (session_id = '' OR session_since IS NULL OR session_since <= ?)`,
			l.SessionID, replica, micros(l.Since), l.NodeID, l.SessionID, replica, micros(l.Since)))
		if err != nil {
			return total, wrapf(err, "keep session of daemon %q", l.NodeID)
		}
		total += int(n)
	}
	return total, nil
}
