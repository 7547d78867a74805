package storetest_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite"

	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
)

// dialectOnly lists what one schema has and the other has not, each with why. Any
// other difference fails the test: a column added to one store only is a bug.
var dialectOnly = map[string]string{
	"postgres audit_pending":        "PostgreSQL seals the audit chain after the commit (postgres/audit.go); SQLite's single writer seals inline",
	"postgres audit_log.pending_id": "links a sealed entry to its pending row, for Store.AppendAudit (PostgreSQL only, as above)",
	"postgres fleet_runs.event_seq": "PostgreSQL's appenders run concurrently and number events from a counter on the run's row; SQLite's single writer numbers max+1",
}

// Both stores' migrated schemas have the same tables with the same columns.
func TestSchemasMatch(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "aegis.db")
	ls, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	ls.Close()
	lite := sqliteColumns(t, ctx, path)

	url := pgtest.Fresh(t, pgtest.URL(t))
	ps, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	ps.Close()
	pg := postgresColumns(t, ctx, url)

	var diffs []string
	for name, in := range map[string][2]map[string]bool{"sqlite": {lite, pg}, "postgres": {pg, lite}} {
		for col := range in[0] {
			if in[1][col] {
				continue
			}
			table, _, _ := strings.Cut(col, ".")
			if dialectOnly[name+" "+col] != "" || dialectOnly[name+" "+table] != "" {
				continue
			}
			diffs = append(diffs, name+" only: "+col)
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 0 {
		t.Fatalf("the schemas differ:\n  %s\n(add the column to both stores' migrations, or to dialectOnly with the reason)", strings.Join(diffs, "\n  "))
	}
	for k := range dialectOnly {
		dialect, col, _ := strings.Cut(k, " ")
		have := pg
		if dialect == "sqlite" {
			have = lite
		}
		if !have[col] {
			t.Errorf("dialectOnly names %q, which the %s schema does not have: remove it", col, dialect)
		}
	}
}

// sqliteColumns returns "table" and "table.column" for every table.
func sqliteColumns(t *testing.T, ctx context.Context, path string) map[string]bool {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `
		SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p
		WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var table, col string
		if err := rows.Scan(&table, &col); err != nil {
			t.Fatal(err)
		}
		out[table], out[table+"."+col] = true, true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func postgresColumns(t *testing.T, ctx context.Context, url string) map[string]bool {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `
		SELECT table_name, column_name FROM information_schema.columns
		WHERE table_schema = current_schema()`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for rows.Next() {
		var table, col string
		if err := rows.Scan(&table, &col); err != nil {
			t.Fatal(err)
		}
		out[table], out[table+"."+col] = true, true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
