package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// dbtx is what *pgxpool.Pool, pgx.Tx and lazyTx have in common.
type dbtx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// queries implements store.Tx on the pool (each statement its own transaction: a
// method's follow-up statement only explains a change that did not happen) or on one
// transaction.
type queries struct {
	sqlstore.Queries // the methods both stores share
	db               dbtx
	// appendedAudit is the last audit_pending row this transaction inserted (0: none),
	// so that its commit wakes the sealer.
	appendedAudit int64
}

func newQueries(db dbtx) *queries {
	a := pgDB{db}
	return &queries{Queries: sqlstore.Queries{D: dialect, R: a, W: a}, db: db}
}

// dialect is PostgreSQL's side of the shared queries.
var dialect = &sqlstore.Dialect{
	Numbered:              true,
	Time:                  ts,
	NoRows:                pgx.ErrNoRows,
	IsUniqueViolation:     func(err error) bool { return pgCode(err) == uniqueViolation },
	IsForeignKeyViolation: func(err error) bool { return pgCode(err) == foreignKeyViolation },
	Tags:                  func(tags []string) (any, error) { return tagsArg(tags), nil },
	TagsCol:               func(tags *[]string) any { return tags }, // text[], natively
}

// pgDB presents a pool or transaction to the shared queries.
type pgDB struct{ db dbtx }

func (p pgDB) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	tag, err := p.db.Exec(ctx, query, args...)
	return tag.RowsAffected(), err
}

func (p pgDB) QueryRow(ctx context.Context, query string, args ...any) sqlstore.Row {
	return p.db.QueryRow(ctx, query, args...)
}

func (p pgDB) Query(ctx context.Context, query string, args ...any) (sqlstore.Rows, error) {
	return p.db.Query(ctx, query, args...)
}

// ts encodes a time for a timestamptz parameter; the zero time is NULL. pgx sends
// whole microseconds, dropping the rest, as the store's contract says.
func ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// tagsArg never sends NULL: pgx encodes a nil slice as NULL, the column is NOT NULL.
func tagsArg(tags []string) []string {
	if tags == nil {
		return []string{}
	}
	return tags
}

// pgCode is the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// Constraint violations. The statements are written so that expected outcomes never
// raise these; they remain as a backstop for races the statements cannot see (and
// then, inside InTx, the transaction is aborted and will not commit).
const (
	foreignKeyViolation = "23503"
	uniqueViolation     = "23505"
)

// wrapf adds context to err, turning pgx.ErrNoRows into store.ErrNotFound.
func wrapf(err error, format string, args ...any) error {
	if errors.Is(err, pgx.ErrNoRows) {
		err = store.ErrNotFound
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

// collect scans every row with scan; the result is empty, never nil.
func collect[T any](rows pgx.Rows, err error, scan func(pgx.Row) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (T, error) { return scan(row) })
}
