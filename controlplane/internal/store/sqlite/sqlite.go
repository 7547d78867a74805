// Package sqlite owns the single-file implementation of store.Store, on
// modernc.org/sqlite (pure Go, no cgo). It is the default when no database URL is
// given: one control-plane process, one file.
//
// Concurrency model: SQLite allows one writer at a time, so the store keeps exactly one
// writer connection and every transaction starts with BEGIN IMMEDIATE on it. Writers
// queue in database/sql for that connection instead of racing for the file lock, so
// they never meet SQLITE_BUSY or a read-to-write upgrade deadlock, and a
// compare-and-swap inside InTx sees the latest committed state. Reads outside a
// transaction use a separate pool of read-only connections; in WAL mode they run
// beside the writer and see the last committed state.
//
// A consequence: inside InTx, use only the Tx passed to fn. Calling a write method of
// the Store itself from inside fn waits for the writer connection fn is holding.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// readConns bounds the read pool. WAL readers do not block each other or the
// writer, and every stream reloads its node's record after a key change: a fleet
// wave of rotations reads a burst of them at once, which 4 connections queued.
const readConns = 16

// Store is a store.Store on one SQLite file.
type Store struct {
	queries
	gc    *groupCommit
	write *sql.DB // exactly one connection
	read  *sql.DB // read-only connections; the same pool as write for ":memory:"
}

var (
	_ store.Store = (*Store)(nil)
	_ store.Tx    = (*queries)(nil)
)

// Open opens the database file at path, creating it (mode 0600) if needed, and brings
// its schema up to date. path ":memory:" gives a private in-memory database, for
// throwaway use.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == ":memory:" {
		// Every connection to :memory: is a different database, so one connection
		// must serve both reads and writes.
		db, err := openDB("file::memory:", 1, false)
		if err != nil {
			return nil, err
		}
		return newStore(ctx, db, db)
	}

	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	// Create the file ourselves: SQLite would create it with the umask's mode, and it
	// holds signing keys. The -wal and -shm files inherit the database file's mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: create database file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("sqlite: create database file: %w", err)
	}

	// A file: URI so that any character in the path ('?', '#', '%') is escaped.
	uri := "file:" + (&url.URL{Path: abs}).EscapedPath()
	write, err := openDB(uri, 1, false)
	if err != nil {
		return nil, err
	}
	s, err := newStore(ctx, write, nil)
	if err != nil {
		return nil, err
	}
	// Opened only after migrating: read connections then see the final schema.
	s.read, err = openDB(uri, readConns, true)
	if err != nil {
		_ = write.Close()
		return nil, err
	}
	s.queries = newQueries(s.read, write, s.gc)
	return s, nil
}

// openDB opens a pool on uri with the connection settings the store relies on.
func openDB(uri string, conns int, readOnly bool) (*sql.DB, error) {
	q := url.Values{}
	// busy_timeout covers other processes (a backup, the sqlite3 shell); inside this
	// process the single writer connection already serializes writers.
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// FULL, not WAL's usual NORMAL: a committed rotation must survive power loss,
		// or the server could forget a key the host has already switched to.
		q.Add("_pragma", "synchronous(FULL)")
		// Take the write lock when the transaction starts, so a transaction never has
		// to upgrade a read lock (the classic SQLITE_BUSY deadlock).
		q.Set("_txlock", "immediate")
	}
	db, err := sql.Open("sqlite", uri+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite: open: %w", err)
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	// Connections live forever: for ":memory:" closing the last one drops the database.
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	return db, nil
}

// newStore migrates write and returns the Store; read may be nil and set later.
func newStore(ctx context.Context, write, read *sql.DB) (*Store, error) {
	if err := migrate(ctx, write); err != nil {
		_ = write.Close()
		return nil, err
	}
	gc := newGroupCommit(write)
	return &Store{
		queries: newQueries(read, write, gc),
		gc:      gc,
		write:   write,
		read:    read,
	}, nil
}

// InTx runs fn as one transaction on the writer connection, sharing the commit with
// the transactions queued beside it (groupcommit.go). It returns once fn's work is
// durable, or fn's error with its work undone.
func (s *Store) InTx(ctx context.Context, fn func(tx store.Tx) error) error {
	return s.gc.run(ctx, func(tx *sql.Tx) error {
		tq := newQueries(detached{tx}, detached{tx}, nil)
		return fn(&tq)
	})
}

// Commits counts the SQLite commits the store has made (transactions that shared a
// commit count once).
func (s *Store) Commits() int64 { return s.gc.Commits() }

// inTx commits when fn returns nil and rolls back otherwise, returning fn's error
// unchanged. The rollback also runs when fn panics or calls runtime.Goexit (a failed
// test assertion), so the single writer connection is never left inside a transaction.
func inTx(ctx context.Context, db *sql.DB, fn func(tx *sql.Tx) error) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_ = tx.Rollback()
		}
	}()
	if err := fn(tx); err != nil {
		done = true
		_ = tx.Rollback()
		return err
	}
	done = true
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	return nil
}

// Ping checks that both pools answer.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.write.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
	}
	if err := s.read.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
	}
	return nil
}

// Close closes both pools.
func (s *Store) Close() error {
	var errs []error
	if s.read != s.write {
		errs = append(errs, s.read.Close())
	}
	errs = append(errs, s.write.Close())
	return errors.Join(errs...)
}
