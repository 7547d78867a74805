package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// migrationFiles are applied in version order by sqlstore.Migrate.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// MigrationState is one embedded migration and whether a database has applied it.
type MigrationState = sqlstore.MigrationState

// migrate applies the missing migrations in one IMMEDIATE transaction, so a second
// process opening the same file waits and then finds nothing to do.
func migrate(ctx context.Context, db *sql.DB) error {
	ms, err := sqlstore.LoadMigrations(migrationFiles, "migrations")
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	err = inTx(ctx, db, func(tx *sql.Tx) error {
		return sqlstore.Migrate(ctx, migrationTx{tx}, ms)
	})
	if err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	return nil
}

type migrationTx struct{ tx *sql.Tx }

func (m migrationTx) Applied(ctx context.Context) ([]int, error) {
	if _, err := m.tx.ExecContext(ctx, `
		CREATE TABLE IF NOT EXISTS schema_migrations (
		    version    INTEGER NOT NULL PRIMARY KEY,
		    name       TEXT    NOT NULL,
		    applied_at INTEGER NOT NULL
		) STRICT`); err != nil {
		return nil, err
	}
	rows, err := m.tx.QueryContext(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var vs []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	return vs, rows.Err()
}

func (m migrationTx) Apply(ctx context.Context, mg sqlstore.Migration) error {
	if _, err := m.tx.ExecContext(ctx, mg.SQL); err != nil {
		return err
	}
	_, err := m.tx.ExecContext(ctx,
		`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		mg.Version, mg.Name, time.Now().UnixMicro())
	return err
}

// MigrationStatus reports, without changing anything (it does not create the file),
// which of this binary's migrations the database at path has applied. newer lists
// versions the database has that this binary does not know: a newer release ran.
func MigrationStatus(ctx context.Context, path string) (states []MigrationState, newer []int, err error) {
	ms, err := sqlstore.LoadMigrations(migrationFiles, "migrations")
	if err != nil {
		return nil, nil, fmt.Errorf("sqlite: %w", err)
	}
	applied := map[int]time.Time{}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlite: %w", err)
	}
	if _, statErr := os.Stat(abs); statErr == nil {
		db, err := openDB("file:"+(&url.URL{Path: abs}).EscapedPath(), 1, true)
		if err != nil {
			return nil, nil, err
		}
		defer db.Close()
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&n); err != nil {
			return nil, nil, fmt.Errorf("sqlite: read schema: %w", err)
		}
		if n > 0 {
			rows, err := db.QueryContext(ctx, `SELECT version, applied_at FROM schema_migrations`)
			if err != nil {
				return nil, nil, fmt.Errorf("sqlite: read schema_migrations: %w", err)
			}
			defer rows.Close()
			for rows.Next() {
				var v int
				var at int64
				if err := rows.Scan(&v, &at); err != nil {
					return nil, nil, err
				}
				applied[v] = time.UnixMicro(at).UTC()
			}
			if err := rows.Err(); err != nil {
				return nil, nil, err
			}
		}
	} else if !errors.Is(statErr, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("sqlite: %w", statErr)
	}
	states, newer = sqlstore.States(ms, applied)
	return states, newer, nil
}
