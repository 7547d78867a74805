// Package sqlstore owns what the two SQL stores (sqlite, postgres) share: the
// migration runner, the query text both dialects accept, the scan helpers, and the
// small Dialect seam for what differs (placeholders, time and tags encoding,
// constraint-violation checks). What only one database has stays in its store: the
// PostgreSQL audit sealer and LISTEN/NOTIFY, advisory locks, SQLite's group commit.
package sqlstore

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Migration is one embedded "NNNN_name.sql" file. A file, once released, never
// changes.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// LoadMigrations reads the .sql files of dir in fsys, sorted by version.
func LoadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var ms []Migration
	for _, e := range entries {
		prefix, _, ok := strings.Cut(e.Name(), "_")
		version, err := strconv.Atoi(prefix)
		if !ok || err != nil || version <= 0 {
			return nil, fmt.Errorf("migration %q: name must start with a positive version number and '_'", e.Name())
		}
		body, err := fs.ReadFile(fsys, dir+"/"+e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, Migration{Version: version, Name: e.Name(), SQL: string(body)})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	for i := 1; i < len(ms); i++ {
		if ms[i].Version == ms[i-1].Version {
			return nil, fmt.Errorf("migrations %q and %q share version %d", ms[i-1].Name, ms[i].Name, ms[i].Version)
		}
	}
	return ms, nil
}

// MigrationTx is one store's migration transaction, already holding whatever lock
// keeps a second process from migrating at the same time.
type MigrationTx interface {
	// Applied lists the versions schema_migrations records, creating the table first
	// if it does not exist.
	Applied(ctx context.Context) ([]int, error)
	// Apply runs m's file and records it in schema_migrations.
	Apply(ctx context.Context, m Migration) error
}

// Migrate applies, through tx, the migrations of ms the database lacks, in version
// order. A database that has applied a version newer than any in ms was migrated by
// a newer release: Migrate refuses it rather than run an old binary on it.
func Migrate(ctx context.Context, tx MigrationTx, ms []Migration) error {
	applied, err := tx.Applied(ctx)
	if err != nil {
		return err
	}
	if latest := ms[len(ms)-1].Version; len(applied) > 0 && slices.Max(applied) > latest {
		return fmt.Errorf("database schema is at version %d, newer than this binary's %d; run a newer release", slices.Max(applied), latest)
	}
	for _, m := range ms {
		if slices.Contains(applied, m.Version) {
			continue
		}
		if err := tx.Apply(ctx, m); err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
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

// States pairs ms with what a database applied (version -> when). newer lists the
// versions the database has that ms does not: a newer release ran.
func States(ms []Migration, applied map[int]time.Time) (states []MigrationState, newer []int) {
	seen := map[int]bool{}
	for _, m := range ms {
		states = append(states, MigrationState{Version: m.Version, Name: m.Name, AppliedAt: applied[m.Version]})
		seen[m.Version] = true
	}
	for v := range applied {
		if !seen[v] {
			newer = append(newer, v)
		}
	}
	slices.Sort(newer)
	return states, newer
}
