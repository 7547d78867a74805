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
	"slices"
	"strconv"
	"strings"
	"time"
)

// migrationFiles are applied in version order; a file, once released, never changes.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads "NNNN_name.sql" files, sorted by version.
func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		prefix, _, ok := strings.Cut(e.Name(), "_")
		version, err := strconv.Atoi(prefix)
		if !ok || err != nil || version <= 0 {
			return nil, fmt.Errorf("migration %q: name must start with a positive version number and '_'", e.Name())
		}
		body, err := fs.ReadFile(migrationFiles, "migrations/"+e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: version, name: e.Name(), sql: string(body)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %q and %q share version %d", ms[i-1].name, ms[i].name, ms[i].version)
		}
	}
	return ms, nil
}

// migrate applies the missing migrations in one IMMEDIATE transaction, so a second
// process opening the same file waits and then finds nothing to do.
func migrate(ctx context.Context, db *sql.DB) error {
	ms, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	err = inTx(ctx, db, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `
			CREATE TABLE IF NOT EXISTS schema_migrations (
			    version    INTEGER NOT NULL PRIMARY KEY,
			    name       TEXT    NOT NULL,
			    applied_at INTEGER NOT NULL
			) STRICT`); err != nil {
			return err
		}
		applied, err := appliedVersions(ctx, tx)
		if err != nil {
			return err
		}
		if latest := ms[len(ms)-1].version; len(applied) > 0 && slices.Max(applied) > latest {
			return fmt.Errorf("database schema is at version %d, newer than this binary's %d; run a newer release", slices.Max(applied), latest)
		}
		for _, m := range ms {
			if slices.Contains(applied, m.version) {
				continue
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx,
				`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, time.Now().UnixMicro()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	return nil
}

func appliedVersions(ctx context.Context, tx *sql.Tx) ([]int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT version FROM schema_migrations`)
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

// MigrationState is one embedded migration and whether a database has applied it.
type MigrationState struct {
	Version int
	Name    string
	// AppliedAt is zero while the migration is pending.
	AppliedAt time.Time
}

// MigrationStatus reports, without changing anything (it does not create the file),
// which of this binary's migrations the database at path has applied. newer lists
// versions the database has that this binary does not know: a newer release ran.
func MigrationStatus(ctx context.Context, path string) (states []MigrationState, newer []int, err error) {
	ms, err := loadMigrations()
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
	for _, m := range ms {
		states = append(states, MigrationState{Version: m.version, Name: m.name, AppliedAt: applied[m.version]})
		delete(applied, m.version)
	}
	for v := range applied {
		newer = append(newer, v)
	}
	slices.Sort(newer)
	return states, newer, nil
}
