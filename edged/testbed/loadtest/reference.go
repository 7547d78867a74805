package loadtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "modernc.org/sqlite" // the reference runs on the same engine as the store
)

// ed25519Reference is how many Ed25519 sign+verify pairs the machine does per second
// with every core busy: the compute floor a fleet rotation is judged against (each
// host's rotation costs a few of each on both ends).
func ed25519Reference(d time.Duration) float64 {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pub := priv.Public().(ed25519.PublicKey)
	msg := make([]byte, 200)
	var n atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	start := time.Now()
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				sig := ed25519.Sign(priv, msg)
				if !ed25519.Verify(pub, msg, sig) {
					panic("ed25519 reference: verify failed")
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// verifyReference is how many Ed25519 verifies one core does per second: what one
// heartbeat, one attestation or one enrollment must at least cost the server.
func verifyReference(d time.Duration) float64 {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pub := priv.Public().(ed25519.PublicKey)
	msg := make([]byte, 200)
	sig := ed25519.Sign(priv, msg)
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		for range 64 {
			if !ed25519.Verify(pub, msg, sig) {
				panic("ed25519 reference: verify failed")
			}
		}
		n += 64
	}
	return float64(n) / time.Since(start).Seconds()
}

// txReference runs the plain 3-statement transaction (pgbench's simple-update shape:
// update a row, read it back, append a history row) with concurrency workers for d,
// on the same database engine and durability as the store, and returns commits/s.
type txReference interface {
	Run(ctx context.Context, concurrency int, d time.Duration) (float64, error)
	Close()
}

const refRows = 10000

// newTxReference prepares the reference tables: in the run's own PostgreSQL schema,
// or in a SQLite file beside the control plane's (same pragmas: WAL, synchronous=FULL).
func newTxReference(ctx context.Context, db database, dir string) (txReference, error) {
	if db.postgres != "" {
		return newPGReference(ctx, db.url)
	}
	return newSQLiteReference(ctx, filepath.Join(dir, "reference.db"))
}

type pgReference struct{ pool *pgxpool.Pool }

func newPGReference(ctx context.Context, url string) (*pgReference, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	// Workers past the pool wait for a connection, as they would in the control
	// plane; 32 stays inside PostgreSQL's default max_connections (100) beside
	// the control plane's own pool.
	cfg.MaxConns = 32
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	_, err = pool.Exec(ctx, `
		CREATE TABLE ref_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
		CREATE TABLE ref_history (id bigserial PRIMARY KEY, account int NOT NULL, delta bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
		INSERT INTO ref_accounts SELECT g, 0 FROM generate_series(1, 10000) g;`)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("reference tables: %w", err)
	}
	return &pgReference{pool: pool}, nil
}

func (r *pgReference) Close() { r.pool.Close() }

func (r *pgReference) Run(ctx context.Context, concurrency int, d time.Duration) (float64, error) {
	return runWorkers(ctx, concurrency, d, func(ctx context.Context, i int64) error {
		tx, err := r.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		id := int(i%refRows) + 1
		if _, err := tx.Exec(ctx, `UPDATE ref_accounts SET balance = balance + $2 WHERE id = $1`, id, i); err != nil {
			return err
		}
		var bal int64
		if err := tx.QueryRow(ctx, `SELECT balance FROM ref_accounts WHERE id = $1`, id).Scan(&bal); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ref_history (account, delta) VALUES ($1, $2)`, id, i); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
}

type sqliteReference struct{ db *sql.DB }

func newSQLiteReference(ctx context.Context, path string) (*sqliteReference, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	// One writer, as the store has.
	db.SetMaxOpenConns(1)
	_, err = db.ExecContext(ctx, `
		CREATE TABLE ref_accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
		CREATE TABLE ref_history (id INTEGER PRIMARY KEY AUTOINCREMENT, account INTEGER NOT NULL, delta INTEGER NOT NULL, at INTEGER NOT NULL);
		WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM g WHERE n < 10000)
		INSERT INTO ref_accounts SELECT n, 0 FROM g;`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("reference tables: %w", err)
	}
	return &sqliteReference{db: db}, nil
}

func (r *sqliteReference) Close() { r.db.Close() }

func (r *sqliteReference) Run(ctx context.Context, concurrency int, d time.Duration) (float64, error) {
	return runWorkers(ctx, concurrency, d, func(ctx context.Context, i int64) error {
		tx, err := r.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		id := int(i%refRows) + 1
		if _, err := tx.ExecContext(ctx, `UPDATE ref_accounts SET balance = balance + ? WHERE id = ?`, i, id); err != nil {
			return err
		}
		var bal int64
		if err := tx.QueryRowContext(ctx, `SELECT balance FROM ref_accounts WHERE id = ?`, id).Scan(&bal); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO ref_history (account, delta, at) VALUES (?, ?, ?)`, id, i, time.Now().UnixMicro()); err != nil {
			return err
		}
		return tx.Commit()
	})
}

// runWorkers calls op from concurrency goroutines for d and returns successes/s.
func runWorkers(ctx context.Context, concurrency int, d time.Duration, op func(ctx context.Context, i int64) error) (float64, error) {
	var n, seq atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) && ctx.Err() == nil {
				if err := op(ctx, seq.Add(1)); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return 0, fmt.Errorf("reference transaction: %w", err)
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}
