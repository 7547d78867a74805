package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// inTx commits when fn returns nil and rolls back otherwise, returning fn's error
// unchanged. The rollback also runs when fn panics or calls runtime.Goexit (a failed
// test assertion), so the connection goes back to the pool outside any transaction;
// if even the rollback fails, pgx closes the connection instead.
//
// BEGIN is not a round trip of its own: it is sent with the transaction's first
// statement (lazyTx), and a transaction that sent none commits nothing.
func inTx(ctx context.Context, pool *pgxpool.Pool, fn func(tx dbtx) error) error {
	var fnErr error
	err := pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		tx := &lazyTx{conn: c.Conn()}
		defer tx.rollback(ctx) // a no-op once committed
		if fnErr = fn(tx); fnErr != nil {
			return fnErr
		}
		return tx.commit(ctx)
	})
	switch {
	case err == nil:
		return nil
	case fnErr != nil:
		// fn failed: its error as is (a failed rollback after it only costs the
		// connection).
		return fnErr
	default:
		return fmt.Errorf("postgres: transaction: %w", err)
	}
}

// lazyTx is a READ COMMITTED transaction on one connection whose BEGIN travels in
// the same batch as its first statement (pgx's Batch.BeginTx), saving a round trip
// per transaction. Once begun it is a pgx.Tx.
type lazyTx struct {
	conn *pgx.Conn
	tx   pgx.Tx // nil until the first statement is sent
}

var _ dbtx = (*lazyTx)(nil)

// SendBatch sends b, preceded by BEGIN if the transaction has not begun.
func (t *lazyTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.tx != nil {
		return t.tx.SendBatch(ctx, b)
	}
	withBegin := &pgx.Batch{}
	withBegin.BeginTx(txOptions)
	withBegin.QueuedQueries = append(withBegin.QueuedQueries, b.QueuedQueries...)
	br := t.conn.SendBatch(ctx, withBegin)
	// From here on, statements go through the transaction; if BEGIN failed, it is
	// closed and refuses them.
	t.tx = br.Tx()
	if _, err := br.Exec(); err != nil {
		// The rest of the batch was skipped; every result reports the failure.
		return &failedBegin{BatchResults: br, err: err}
	}
	return br
}

func (t *lazyTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.tx != nil {
		return t.tx.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := t.SendBatch(ctx, b)
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

func (t *lazyTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.tx != nil {
		return t.tx.QueryRow(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := t.SendBatch(ctx, b)
	return batchRow{row: br.QueryRow(), br: br}
}

// Query begins with a round trip of its own: rows stream, and a batch's results
// would have to stay open until they are read. No hot transaction starts with one.
func (t *lazyTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.tx == nil {
		tx, err := t.conn.BeginTx(ctx, txOptions)
		if err != nil {
			return nil, err
		}
		t.tx = tx
	}
	return t.tx.Query(ctx, sql, args...)
}

func (t *lazyTx) commit(ctx context.Context) error {
	if t.tx == nil {
		return nil
	}
	return t.tx.Commit(ctx)
}

func (t *lazyTx) rollback(ctx context.Context) {
	if t.tx != nil {
		_ = t.tx.Rollback(ctx) // ErrTxClosed after a commit
	}
}

// batchRow is the one row of a batch sent for a single QueryRow: scanning it
// closes the batch.
type batchRow struct {
	row pgx.Row
	br  pgx.BatchResults
}

func (r batchRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}

// failedBegin reports BEGIN's failure from every result of the batch.
type failedBegin struct {
	pgx.BatchResults
	err error
}

func (f *failedBegin) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, f.err }
func (f *failedBegin) Query() (pgx.Rows, error)         { return nil, f.err }
func (f *failedBegin) QueryRow() pgx.Row                { return errRow{f.err} }
func (f *failedBegin) Close() error {
	_ = f.BatchResults.Close() // it reports the same failure
	return f.err
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
