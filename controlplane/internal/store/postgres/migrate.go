package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlstore"
)

// migrationFiles are applied in version order by sqlstore.Migrate.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrateLockKey names the advisory lock replicas take while migrating. Advisory
// locks are per database, not per schema, so stores in different schemas of one
// database migrate one after the other; that costs nothing worth a per-schema key.
const migrateLockKey int64 = 0x6165676973_01 // "aegis", 1

// MigrationState is one embedded migration and whether a database has applied it.
type MigrationState = sqlstore.MigrationState

// migrate applies the missing migrations in one transaction. Replicas starting
// together queue on the advisory lock (taken before anything else, even before
// CREATE TABLE IF NOT EXISTS, which itself races in the catalog); each later one
// then finds nothing to do. DDL is transactional in PostgreSQL, so a failed
// migration leaves the schema as it was.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := sqlstore.LoadMigrations(migrationFiles, "migrations")
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	err = inTx(ctx, pool, func(tx dbtx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		return sqlstore.Migrate(ctx, migrationTx{tx}, ms)
	})
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	return nil
}

type migrationTx struct{ tx dbtx }

func (m migrationTx) Applied(ctx context.Context) ([]int, error) {
	if _, err := m.tx.Exec(ctx, `
		CREATE TABLE IF NOT EXISTS schema_migrations (
		    version    integer     NOT NULL PRIMARY KEY,
		    name       text        NOT NULL,
		    applied_at timestamptz NOT NULL DEFAULT now()
		)`); err != nil {
		return nil, err
	}
	rows, err := m.tx.Query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int])
}

func (m migrationTx) Apply(ctx context.Context, mg sqlstore.Migration) error {
	// No arguments: pgx sends the file with the simple protocol, which allows several
	// statements in one string.
	if _, err := m.tx.Exec(ctx, mg.SQL); err != nil {
		return err
	}
	_, err := m.tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, mg.Version, mg.Name)
	return err
}

// MigrationStatus reports, without changing anything, which of this binary's
// migrations the schema in url's search_path has applied. newer lists versions the
// database has that this binary does not know: a newer release ran.
func MigrationStatus(ctx context.Context, url string) (states []MigrationState, newer []int, err error) {
	ms, err := sqlstore.LoadMigrations(migrationFiles, "migrations")
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
	states, newer = sqlstore.States(ms, applied)
	return states, newer, nil
}
