package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// Dialect is what the two databases do differently for the shared queries, and
// nothing more. The shared text is written as PostgreSQL reads it: $N placeholders
// and standard SQL that SQLite accepts too (ON CONFLICT DO NOTHING, RETURNING,
// NULLS FIRST).
type Dialect struct {
	// Numbered says whether the database takes $N placeholders as they are; if
	// not, they are rewritten to ?N (SQLite's numbered form) once per query text.
	Numbered bool
	// Time encodes a time argument; the zero time must be NULL. TimeCol reads both
	// encodings back.
	Time func(time.Time) any
	// NoRows is the driver's "no row" error, which the queries report as
	// store.ErrNotFound.
	NoRows error
	// IsUniqueViolation and IsForeignKeyViolation recognise the driver's constraint
	// errors. The shared statements are written so that expected outcomes never
	// raise them; they are the backstop for races a statement cannot see.
	IsUniqueViolation     func(error) bool
	IsForeignKeyViolation func(error) bool
	// Tags encodes a tags argument (never NULL: the column is NOT NULL); TagsCol is
	// the scan destination that reads one back.
	Tags    func([]string) (any, error)
	TagsCol func(*[]string) any

	rebound sync.Map // query text -> its ?N form
}

// Rebind is query in this dialect's placeholders.
func (d *Dialect) Rebind(query string) string {
	if d.Numbered {
		return query
	}
	if q, ok := d.rebound.Load(query); ok {
		return q.(string)
	}
	// The shared queries hold no '$' but their placeholders (no string literals
	// with one, no dollar quoting).
	q := strings.ReplaceAll(query, "$", "?")
	d.rebound.Store(query, q)
	return q
}

// Row is one result row: *sql.Row, *sql.Rows and pgx.Row all scan this way.
type Row interface{ Scan(dest ...any) error }

// Rows is a result set, as both drivers' adapters present it.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// DB runs statements: a pool or a transaction, adapted from each driver.
type DB interface {
	// Exec returns how many rows the statement changed.
	Exec(ctx context.Context, query string, args ...any) (int64, error)
	QueryRow(ctx context.Context, query string, args ...any) Row
	Query(ctx context.Context, query string, args ...any) (Rows, error)
}

// Queries implements the shared store.Tx methods. R serves reads and W writes: on
// SQLite outside a transaction they are the read pool and the writer; otherwise
// both are the one connection or transaction.
type Queries struct {
	D    *Dialect
	R, W DB
	// Atomic, when set, runs a method that needs two statements (a compare-and-swap
	// and the read that explains a lost one) in a transaction of its own: SQLite
	// outside InTx. Nil runs them as they come (inside a transaction, or on
	// PostgreSQL, where the second statement only explains a change that did not
	// happen).
	Atomic func(ctx context.Context, fn func(q Queries) error) error
}

func (q Queries) atomic(ctx context.Context, fn func(q Queries) error) error {
	if q.Atomic == nil {
		return fn(q)
	}
	return q.Atomic(ctx, fn)
}

func (q Queries) exec(ctx context.Context, query string, args ...any) (int64, error) {
	return q.W.Exec(ctx, q.D.Rebind(query), args...)
}

func (q Queries) writeRow(ctx context.Context, query string, args ...any) Row {
	return q.W.QueryRow(ctx, q.D.Rebind(query), args...)
}

func (q Queries) readRow(ctx context.Context, query string, args ...any) Row {
	return q.R.QueryRow(ctx, q.D.Rebind(query), args...)
}

func (q Queries) read(ctx context.Context, query string, args ...any) (Rows, error) {
	return q.R.Query(ctx, q.D.Rebind(query), args...)
}

// wrapf adds context to err, turning the driver's no-row error into
// store.ErrNotFound.
func (q Queries) wrapf(err error, format string, args ...any) error {
	if errors.Is(err, q.D.NoRows) {
		err = store.ErrNotFound
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

// Collect scans every row with scan; the result is empty, never nil.
func Collect[T any](rows Rows, err error, scan func(Row) (T, error)) ([]T, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// TimeCol scans a nullable time column of either encoding into a time.Time: NULL
// is the zero time; SQLite's INTEGER microseconds and PostgreSQL's timestamptz
// come back in UTC.
type TimeCol struct{ T *time.Time }

func (c TimeCol) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*c.T = time.Time{}
	case int64:
		*c.T = time.UnixMicro(v).UTC()
	case time.Time:
		*c.T = v.UTC()
	default:
		// PostgreSQL's infinity arrives as text.
		return fmt.Errorf("time column holds %T %v, want a finite time", v, v)
	}
	return nil
}

func (q Queries) write(ctx context.Context, query string, args ...any) (Rows, error) {
	return q.W.Query(ctx, q.D.Rebind(query), args...)
}

// Bytes encodes a byte-string argument: empty is NULL, so nil round-trips as nil.
func Bytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// BytesCol scans a nullable BLOB or bytea, turning NULL and empty into nil.
type BytesCol struct{ B *[]byte }

func (c BytesCol) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*c.B = nil
	case []byte:
		if len(v) == 0 {
			*c.B = nil
		} else {
			// The driver may reuse v's buffer for the next row.
			*c.B = append([]byte(nil), v...)
		}
	default:
		return fmt.Errorf("byte column holds %T", v)
	}
	return nil
}
