package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
)

// maxBatch bounds how many transactions share one commit, and so how long the first
// of them waits for the commit that makes it durable.
const maxBatch = 256

// groupCommit is the store's single writer with group commit. SQLite has one writer
// at a time and, with synchronous=FULL, every commit pays an fsync of the WAL: one
// commit per transaction caps writes at the disk's fsync rate. Here transactions
// that queue for the writer share one SQLite transaction and one commit.
//
// Each caller still runs its fn on its own goroutine, one at a time, inside a
// SAVEPOINT of the shared transaction: a fn that fails (or panics) is rolled back to
// its savepoint alone, exactly as if it had had a transaction of its own, and the
// others keep their work. The member that finds nobody else waiting (or the batch
// full) commits; every member of the batch returns only after that commit, with its
// error, so InTx returning nil still means durable (a committed rotation survives a
// power cut: the host may already have switched to its new key).
//
// Members see the writes of the members before them in the batch, as they would
// have after their commits; readers on other connections see the batch at its
// commit. Statements run detached from the callers' contexts: interrupting a write
// statement makes SQLite roll back the whole transaction, members before included.
// Transactions are short and never wait on the network, so this costs little.
type groupCommit struct {
	db *sql.DB
	// sem is the writer: held by the member running its fn (and by the commit).
	sem chan struct{}
	// waiting counts callers queued for sem: while there are some, the batch stays
	// open for them.
	waiting atomic.Int32

	// Under sem:
	tx      *sql.Tx
	batch   *batch
	members int // members of the open batch whose work is kept
	opened  int // savepoints opened in the open transaction

	commits atomic.Int64
}

type batch struct {
	done chan struct{}
	err  error
}

func newGroupCommit(db *sql.DB) *groupCommit {
	return &groupCommit{db: db, sem: make(chan struct{}, 1)}
}

// Commits counts the SQLite commits so far (for tests and the load tool's figures).
func (g *groupCommit) Commits() int64 { return g.commits.Load() }

// run runs fn in the shared transaction and returns once its work is committed
// (nil) or rolled back (fn's error unchanged, or the commit's).
func (g *groupCommit) run(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	g.waiting.Add(1)
	// Not bounded by ctx: every queued caller must take its turn, or a batch left
	// open for it would never be committed. The wait is one batch at most.
	g.sem <- struct{}{}
	g.waiting.Add(-1)
	held := true
	release := func() {
		if held {
			held = false
			<-g.sem
		}
	}
	defer release()

	if err := ctx.Err(); err != nil {
		g.settle()
		return err
	}
	if g.tx == nil {
		tx, err := g.db.BeginTx(context.Background(), nil)
		if err != nil {
			return fmt.Errorf("sqlite: begin: %w", err)
		}
		g.tx, g.batch, g.members, g.opened = tx, &batch{done: make(chan struct{})}, 0, 0
	}
	tx, b := g.tx, g.batch
	sp := "m" + strconv.Itoa(g.opened)
	g.opened++
	if _, err := tx.Exec("SAVEPOINT " + sp); err != nil {
		g.abort(fmt.Errorf("sqlite: savepoint: %w", err))
		return fmt.Errorf("sqlite: savepoint: %w", err)
	}

	kept := false
	defer func() {
		// Also on a panic or runtime.Goexit (a failed test assertion) in fn: undo
		// this member's work, let the batch go on, and let the panic continue.
		if !kept {
			if _, rerr := tx.Exec("ROLLBACK TO " + sp); rerr != nil {
				g.abort(fmt.Errorf("sqlite: rollback to savepoint: %w", rerr))
			} else if _, rerr := tx.Exec("RELEASE " + sp); rerr != nil {
				g.abort(fmt.Errorf("sqlite: release savepoint: %w", rerr))
			} else {
				g.settle()
			}
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if _, err := tx.Exec("RELEASE " + sp); err != nil {
		g.abort(fmt.Errorf("sqlite: release savepoint: %w", err))
		kept = true // the savepoint is gone with the transaction
		return fmt.Errorf("sqlite: release savepoint: %w", err)
	}
	kept = true
	g.members++
	g.settle()
	release()
	<-b.done
	return b.err
}

// settle commits the open batch unless more callers are queued for it (and it has
// room), and closes an open transaction that kept no work. Under sem.
func (g *groupCommit) settle() {
	if g.tx == nil {
		return
	}
	if g.waiting.Load() > 0 && g.members < maxBatch {
		return
	}
	tx, b := g.tx, g.batch
	g.tx, g.batch = nil, nil
	if g.members == 0 {
		_ = tx.Rollback()
		close(b.done)
		return
	}
	if err := tx.Commit(); err != nil {
		b.err = fmt.Errorf("sqlite: commit: %w", err)
	} else {
		g.commits.Add(1)
	}
	close(b.done)
}

// abort ends the open transaction after a failure that may have left it unusable:
// every member kept so far is told its work was not committed. Under sem.
func (g *groupCommit) abort(cause error) {
	if g.tx == nil {
		return
	}
	tx, b := g.tx, g.batch
	g.tx, g.batch = nil, nil
	if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
		cause = errors.Join(cause, rerr)
	}
	b.err = fmt.Errorf("%w (the transaction was rolled back)", cause)
	close(b.done)
}

// detached runs a transaction's statements without the caller's cancellation (see
// groupCommit).
type detached struct{ tx *sql.Tx }

func (d detached) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return d.tx.ExecContext(context.WithoutCancel(ctx), query, args...)
}

func (d detached) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return d.tx.QueryContext(context.WithoutCancel(ctx), query, args...)
}

func (d detached) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return d.tx.QueryRowContext(context.WithoutCancel(ctx), query, args...)
}
