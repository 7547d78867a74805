package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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

// migrateLockKey names the advisory lock replicas take while migrating. Advisory
// locks are per database, not per schema, so stores in different schemas of one
// database migrate one after the other; that costs nothing worth a per-schema key.
const migrateLockKey int64 = 0x6165676973_01 // "aegis", 1

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

// migrate applies the missing migrations in one transaction. Replicas starting
// together queue on the advisory lock (taken before anything else, even before
// CREATE TABLE IF NOT EXISTS, which itself races in the catalog); each later one
// then finds nothing to do. DDL is transactional in PostgreSQL, so a failed
// migration leaves the schema as it was.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	err = inTx(ctx, pool, func(tx dbtx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			CREATE TABLE IF NOT EXISTS schema_migrations (
			    version    integer     NOT NULL PRIMARY KEY,
			    name       text        NOT NULL,
			    applied_at timestamptz NOT NULL DEFAULT now()
			)`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT version FROM schema_migrations`)
		if err != nil {
			return err
		}
		applied, err := pgx.CollectRows(rows, pgx.RowTo[int])
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
			// No arguments: pgx sends the file with the simple protocol, which allows
			// several statements in one string.
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx,
				`INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	return nil
}

// MigrationState is one embedded migration and whether a database has applied it.
type MigrationState struct {
	Version int
	Name    string
	// AppliedAt is zero while the migration is pending.
	AppliedAt time.Time
}

// MigrationStatus reports, without changing anything, which of this binary's
// migrations the schema in url's search_path has applied. newer lists versions the
// database has that this binary does not know: a newer release ran.
func MigrationStatus(ctx context.Context, url string) (states []MigrationState, newer []int, err error) {
	ms, err := loadMigrations()
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: %w", err)
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, nil, errors.New("postgres: the database URL does not parse as a postgres:// URL or key=value connection string")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	applied := map[int]time.Time{}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, nil, fmt.Errorf("postgres: read schema: %w", err)
	}
	if exists {
		rows, err := conn.Query(ctx, `SELECT version, applied_at FROM schema_migrations`)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres: read schema_migrations: %w", err)
		}
		for rows.Next() {
			var v int
			var at time.Time
			if err := rows.Scan(&v, &at); err != nil {
				rows.Close()
				return nil, nil, err
			}
			applied[v] = at.UTC()
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
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
