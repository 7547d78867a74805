package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// dbtx is what *sql.DB and *sql.Tx have in common.
type dbtx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// queries implements store.Tx. Outside a transaction r is the read pool and w the
// writer pool; inside InTx both are the transaction.
type queries struct {
	sqlstore.Queries // the methods both stores share
	r, w             dbtx
	gc               *groupCommit // the writer outside a transaction; nil inside one
}

func newQueries(r, w dbtx, gc *groupCommit) queries {
	q := queries{Queries: sqlstore.Queries{D: dialect, R: sqlDB{r}, W: sqlDB{w}}, r: r, w: w, gc: gc}
	if gc != nil {
		q.Atomic = func(ctx context.Context, fn func(sqlstore.Queries) error) error {
			return gc.run(ctx, func(tx *sql.Tx) error {
				return fn(newQueries(detached{tx}, detached{tx}, nil).Queries)
			})
		}
	}
	return q
}

// dialect is SQLite's side of the shared queries.
var dialect = &sqlstore.Dialect{
	Time:                  micros,
	NoRows:                sql.ErrNoRows,
	IsUniqueViolation:     isUniqueViolation,
	IsForeignKeyViolation: isForeignKeyViolation,
	Tags:                  func(tags []string) (any, error) { return tagsJSON(tags) },
	TagsCol:               func(tags *[]string) any { return tagsCol{tags} }, // a JSON array
}

// sqlDB presents a database/sql pool or transaction to the shared queries.
type sqlDB struct{ db dbtx }

func (d sqlDB) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return changed(d.db.ExecContext(ctx, query, args...))
}

func (d sqlDB) QueryRow(ctx context.Context, query string, args ...any) sqlstore.Row {
	return d.db.QueryRowContext(ctx, query, args...)
}

func (d sqlDB) Query(ctx context.Context, query string, args ...any) (sqlstore.Rows, error) {
	rows, err := d.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }

// atomic runs a method that needs several statements as one transaction: the
// caller's, or a new one when the method was called on the Store.
func (q *queries) atomic(ctx context.Context, fn func(q *queries) error) error {
	if q.gc == nil {
		return fn(q)
	}
	return q.gc.run(ctx, func(tx *sql.Tx) error {
		tq := newQueries(detached{tx}, detached{tx}, nil)
		return fn(&tq)
	})
}

// micros encodes a time as the stored INTEGER; the zero time is NULL.
func micros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

// microsOf rounds t the way the store does, for values returned without a read.
func microsOf(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return time.UnixMicro(t.UnixMicro()).UTC()
}

func tagsJSON(tags []string) (string, error) {
	if tags == nil {
		tags = []string{}
	}
	b, err := json.Marshal(tags)
	return string(b), err
}

// tagsCol scans a JSON array column; the result is never nil.
type tagsCol struct{ tags *[]string }

func (c tagsCol) Scan(v any) error {
	tags := []string{}
	if err := unmarshalCol(v, &tags); err != nil {
		return err
	}
	if tags == nil { // the column held JSON null
		tags = []string{}
	}
	*c.tags = tags
	return nil
}

func unmarshalCol(v, dst any) error {
	switch v := v.(type) {
	case string:
		return json.Unmarshal([]byte(v), dst)
	case []byte:
		return json.Unmarshal(v, dst)
	default:
		return fmt.Errorf("JSON column holds %T", v)
	}
}

// changed reports how many rows a statement touched.
func changed(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

func isUniqueViolation(err error) bool {
	c := sqliteCode(err)
	return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
}

func isForeignKeyViolation(err error) bool {
	return sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
}

// wrapf adds context to err, turning sql.ErrNoRows into store.ErrNotFound.
func wrapf(err error, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		err = store.ErrNotFound
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}
