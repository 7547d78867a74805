package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/audit"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// The chain is sealed after the fact, so that audited transactions never wait for
// one another (DESIGN §7: rotations are concurrent transactions).
//
// AppendAudit inserts the entry into audit_pending inside the caller's transaction:
// no change commits without its record, and a rolled-back change leaves none. The
// sealer (SealAudit) then moves committed pending entries onto the chain in batches:
// in one short transaction of its own, under auditSealLock, it reads the chain's end,
// gives each entry the next id, its PrevHash and Hash (audit.Seal), inserts them into
// audit_log and deletes them from audit_pending. Only sealers wait on that lock, and
// a sealer commits a whole batch at once, so the chain costs one commit per batch
// instead of a global lock across every audited commit.
//
// Order: the chain's order is the order the sealer sees entries committed (by
// transaction, then by insertion); ids are given under the lock, so they become
// visible in order and a reader paging with "id > the last id I saw" never skips
// one. Until it is sealed (normally within sealGap: every commit that appended wakes
// the sealer, at most once per sealGap, and it also runs every sealEvery), an entry
// is in audit_pending, outside the chain's protection; Store.ListAudit and
// Store.ListNodeAudit seal first, so `aegis audit list` and `audit verify` always
// cover every committed entry.

// auditSealLock is the advisory lock (classid, objid) sealers take; objid is the
// schema's hash, so stores in different schemas of one database seal independently.
const auditSealLock = `pg_advisory_xact_lock(1634035561, hashtext(current_schema()))` // "aegi"

// sealBatch bounds how many entries one sealing transaction moves.
const sealBatch = 2000

// appendAuditSQL inserts a pending entry; the transaction's own id groups its
// entries, so they stay adjacent on the chain.
const appendAuditSQL = `
	INSERT INTO audit_pending (tx_group, at, tenant_id, actor, action, node_id, result, details)
	VALUES (pg_current_xact_id()::text::bigint, $1, $2, $3, $4, $5, $6, $7::jsonb)
	RETURNING pid`

// pendingAudit is e as it is stored and returned before sealing: its time in
// microseconds and UTC (exactly what a later ListAudit reads and the hash covers),
// details never nil, no id or hashes yet.
func pendingAudit(e store.AuditEntry) store.AuditEntry {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	e.At = audit.Normalize(e.At)
	if e.Details == nil {
		e.Details = map[string]string{}
	}
	e.ID, e.PrevHash, e.Hash = 0, "", ""
	return e
}

func pendingAuditArgs(e store.AuditEntry) []any {
	return []any{e.At, e.TenantID, e.Actor, e.Action, e.NodeID, e.Result, e.Details}
}

// AppendAudit records e in the caller's transaction; it joins the chain when sealed.
// The returned entry has no ID or Hash yet (Store.AppendAudit returns it sealed).
func (q *queries) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	e = pendingAudit(e)
	var pid int64
	err := q.db.QueryRow(ctx, appendAuditSQL, pendingAuditArgs(e)...).Scan(&pid)
	if err != nil {
		return store.AuditEntry{}, wrapf(err, "append audit")
	}
	q.appendedAudit = pid
	return e, nil
}

// AppendAudit outside InTx: the entry is committed, then sealed, and returned as it
// stands on the chain.
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) (out store.AuditEntry, err error) {
	var pid int64
	err = s.InTx(ctx, func(tx store.Tx) error {
		out, err = tx.AppendAudit(ctx, e)
		pid = tx.(*queries).appendedAudit
		return err
	})
	if err != nil {
		return store.AuditEntry{}, err
	}
	if err := s.SealAudit(ctx); err != nil {
		return store.AuditEntry{}, err
	}
	list, err := s.queries.ScanAudit(ctx, `WHERE pending_id = $1`, pid)
	if err != nil || len(list) != 1 {
		return store.AuditEntry{}, wrapf(errOr(err, store.ErrNotFound), "read back sealed audit entry")
	}
	return list[0], nil
}

func errOr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

// SealAudit moves every committed pending entry onto the chain, in batches.
func (s *Store) SealAudit(ctx context.Context) error {
	for {
		n, err := s.sealOnce(ctx)
		if err != nil {
			return err
		}
		if n < sealBatch {
			return nil
		}
	}
}

func (s *Store) sealOnce(ctx context.Context) (n int, err error) {
	err = inTx(ctx, s.pool, func(tx dbtx) error {
		// One round trip for the lock and both reads (BEGIN rides along too). Each
		// read runs after the lock is granted and, at READ COMMITTED, sees what was
		// committed when it started: the previous sealer's rows included.
		b := &pgx.Batch{}
		b.Queue(`SELECT ` + auditSealLock)
		b.Queue(`
			SELECT pid, at, tenant_id, actor, action, node_id, result, details
			FROM audit_pending ORDER BY tx_group, pid LIMIT $1`, sealBatch)
		b.Queue(`SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1`)
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("lock the chain: %w", err)
		}
		rows, err := br.Query()
		type pending struct {
			pid int64
			e   store.AuditEntry
		}
		ps, err := collect(rows, err, func(row pgx.Row) (pending, error) {
			var p pending
			err := row.Scan(&p.pid, sqlstore.TimeCol{T: &p.e.At}, &p.e.TenantID, &p.e.Actor, &p.e.Action, &p.e.NodeID, &p.e.Result, &p.e.Details)
			if p.e.Details == nil {
				p.e.Details = map[string]string{}
			}
			return p, err
		})
		if err != nil {
			return fmt.Errorf("read pending entries: %w", err)
		}
		var lastID int64
		var prevHash string
		err = br.QueryRow().Scan(&lastID, &prevHash)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read the chain's last entry: %w", err)
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("read pending entries: %w", err)
		}
		n = len(ps)
		if n == 0 {
			return nil
		}
		var cols struct {
			id, pid                                         []int64
			at                                              []time.Time
			tenant, actor, action, node, result, prev, hash []string
			details                                         []map[string]string
		}
		for _, p := range ps {
			lastID++
			p.e.ID = lastID
			e := audit.Seal(p.e, prevHash)
			prevHash = e.Hash
			cols.id, cols.pid, cols.at = append(cols.id, e.ID), append(cols.pid, p.pid), append(cols.at, e.At)
			cols.tenant, cols.actor, cols.action = append(cols.tenant, e.TenantID), append(cols.actor, e.Actor), append(cols.action, e.Action)
			cols.node, cols.result, cols.details = append(cols.node, e.NodeID), append(cols.result, e.Result), append(cols.details, e.Details)
			cols.prev, cols.hash = append(cols.prev, e.PrevHash), append(cols.hash, e.Hash)
		}
		// Both writes in one round trip.
		wb := &pgx.Batch{}
		wb.Queue(`
			INSERT INTO audit_log (id, pending_id, at, tenant_id, actor, action, node_id, result, details, prev_hash, hash)
			SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
			                     $8::text[], $9::jsonb[], $10::text[], $11::text[])`,
			cols.id, cols.pid, cols.at, cols.tenant, cols.actor, cols.action, cols.node, cols.result, cols.details,
			cols.prev, cols.hash)
		wb.Queue(`DELETE FROM audit_pending WHERE pid = ANY($1)`, cols.pid)
		wr := tx.SendBatch(ctx, wb)
		defer wr.Close()
		if _, err := wr.Exec(); err != nil {
			return fmt.Errorf("insert sealed entries: %w", err)
		}
		if _, err := wr.Exec(); err != nil {
			return fmt.Errorf("delete sealed entries: %w", err)
		}
		if err := wr.Close(); err != nil {
			return fmt.Errorf("seal entries: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, wrapf(err, "seal audit")
	}
	return n, nil
}

// sealEvery bounds how long a committed entry can wait for the sealer when no wake-up
// reaches it (an entry committed by a replica that died before sealing it).
const sealEvery = time.Second

// sealGap is the least time between two sealing runs started by wake-ups. Under a
// burst of audited commits, each run then seals the entries of many commits in one
// transaction instead of one run (and one PostgreSQL commit) per entry; an entry
// waits at most this much longer to be sealed. What a run costs beyond its rows (the
// lock, the pending read, the delete) is paid per run: measured with
// pg_stat_statements under `aegis-loadtest rotate` at 32 concurrent, the sealer's
// statements took 180 µs of PostgreSQL time per rotation at 10 ms (runs of ~5
// entries) and 109 µs at 100 ms (~68 entries); 50 ms keeps the pending window short.
const sealGap = 50 * time.Millisecond

// sealLoop seals whenever a commit that appended wakes it (at most once per
// sealGap), and every sealEvery.
func (s *Store) sealLoop(ctx context.Context) {
	defer close(s.sealerDone)
	t := time.NewTicker(sealEvery)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wakeSealer:
			if wait := sealGap - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		case <-t.C:
		}
		last = time.Now()
		if err := s.SealAudit(ctx); err != nil && ctx.Err() == nil && s.log != nil {
			s.log.Warn("audit sealer: will retry", "err", err)
		}
	}
}

// woke tells the sealer a transaction that appended audit entries has committed.
func (s *Store) woke() {
	select {
	case s.wakeSealer <- struct{}{}:
	default:
	}
}

// ListAudit on the Store seals first, so the listing covers every committed entry.
func (s *Store) ListAudit(ctx context.Context, tenantID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	if err := s.SealAudit(ctx); err != nil {
		return nil, err
	}
	return s.queries.ListAudit(ctx, tenantID, afterID, limit)
}

// ListNodeAudit on the Store seals first, as ListAudit.
func (s *Store) ListNodeAudit(ctx context.Context, tenantID, nodeID string, afterID int64, limit int) ([]store.AuditEntry, error) {
	if err := s.SealAudit(ctx); err != nil {
		return nil, err
	}
	return s.queries.ListNodeAudit(ctx, tenantID, nodeID, afterID, limit)
}

// The chain's listings inside a transaction (sealed entries only) are sqlstore's.
