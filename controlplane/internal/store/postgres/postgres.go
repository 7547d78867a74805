// Package postgres owns the PostgreSQL implementation of store.Store, on pgx/v5 and
// pgxpool: the production store, shared by several control-plane replicas.
//
// Concurrency model: every transaction runs at READ COMMITTED, and every rule that
// must hold under concurrency is a conditional statement (UPDATE ... WHERE <expected
// state>, INSERT ... ON CONFLICT DO NOTHING, DELETE ... RETURNING). A racer blocks on
// the row the winner locked, re-checks its WHERE clause against the committed row
// once the winner is done, and finds nothing to change: the compare-and-swap lost.
// There is no serialization failure to retry.
//
// PostgreSQL aborts a whole transaction on any raised error, so an expected outcome
// (a duplicate, a lost swap, an unknown tenant) is never raised as an SQL error: the
// statement changes no row, and a second statement, run only then, says why. A
// caller may record the failure and still commit.
//
// Inside InTx, use only the Tx passed to fn: a call on the Store itself takes a second
// connection from the pool, does not see the transaction's writes, and can wait
// forever for a row the transaction has locked.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Store is a store.Store on a PostgreSQL connection pool.
type Store struct {
	queries
	pool *pgxpool.Pool
	log  *slog.Logger

	// The audit sealer (audit.go): woken after each commit that appended entries.
	wakeSealer chan struct{}
	stopSealer context.CancelFunc
	sealerDone chan struct{}
}

var (
	_ store.Store = (*Store)(nil)
	_ store.Tx    = (*queries)(nil)
)

// txOptions pins the isolation level the conditional statements are written for, so
// a server whose default_transaction_isolation is SERIALIZABLE does not turn lost
// swaps into serialization failures.
var txOptions = pgx.TxOptions{IsoLevel: pgx.ReadCommitted}

// Options tune Open; the zero value is the production default.
type Options struct {
	// MaxConns sizes the pool: 0 keeps the URL's pool_max_conns if it has one, else
	// DefaultMaxConns. (pgxpool's own default, max(4, cores), makes a burst of
	// rotations wait for connections rather than for the database.)
	MaxConns int
	// Logger receives the audit sealer's warnings; nil discards them.
	Logger *slog.Logger
	// Tracer sees every statement and batch the pool sends (pgx's tracing hooks):
	// for tests that count round trips, and for debugging. nil: none.
	Tracer pgx.QueryTracer
}

// DefaultMaxConns is the pool size when neither Options nor the URL sets one: enough
// for a burst of concurrent rotations (DESIGN §7 measures 32 in flight) on a 2-core
// replica, while three replicas stay inside PostgreSQL's default max_connections of
// 100.
const DefaultMaxConns = 32

// Open connects to the database at url (a postgres:// URL or key=value string, as
// pgxpool.ParseConfig takes; pool_max_conns and run-time parameters such as
// search_path pass through), checks that it answers and brings the schema in the
// connection's search_path up to date.
func Open(ctx context.Context, url string, opts ...Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx redacts passwords only on a best-effort basis, and a URL that does not
		// parse is exactly where it may miss one: say nothing about the text.
		return nil, errors.New("postgres: the database URL does not parse as a postgres:// URL or key=value connection string")
	}
	// Statements are prepared once per connection and reused: pgx's default exec
	// mode (QueryExecModeCacheStatement) keeps a prepared-statement cache on every
	// connection, so the hot statements of a rotation parse and plan once.
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	switch {
	case o.MaxConns > 0:
		cfg.MaxConns = int32(o.MaxConns)
	case !strings.Contains(url, "pool_max_conns"):
		cfg.MaxConns = DefaultMaxConns
	}
	if o.Tracer != nil {
		cfg.ConnConfig.Tracer = o.Tracer
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	st := &Store{queries: *newQueries(pool), pool: pool, log: o.Logger,
		wakeSealer: make(chan struct{}, 1), sealerDone: make(chan struct{})}
	if st.log == nil {
		st.log = slog.New(slog.DiscardHandler)
	}
	sctx, cancel := context.WithCancel(context.Background())
	st.stopSealer = cancel
	go st.sealLoop(sctx)
	return st, nil
}

// InTx runs fn in one READ COMMITTED transaction.
func (s *Store) InTx(ctx context.Context, fn func(tx store.Tx) error) error {
	var q *queries
	err := inTx(ctx, s.pool, func(tx dbtx) error {
		q = newQueries(tx)
		return fn(q)
	})
	if err == nil && q.appendedAudit != 0 {
		s.woke()
	}
	return err
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

// Close stops the audit sealer and closes the pool, waiting for connections in use
// to be returned. Entries committed but not yet sealed stay in audit_pending for the next store.
func (s *Store) Close() error {
	s.stopSealer()
	<-s.sealerDone
	s.pool.Close()
	return nil
}
