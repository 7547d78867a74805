package postgres_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
	"github.com/aegis-edge/aegis/controlplane/internal/store/storetest"
)

func open(t *testing.T, url string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	base := pgtest.URL(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, pgtest.Fresh(t, base))
	})
}

func TestAuditTamper(t *testing.T) {
	base := pgtest.URL(t)
	storetest.RunAuditTamper(t, func(t *testing.T) (store.Store, storetest.Tamper) {
		url := pgtest.Fresh(t, base)
		return open(t, url), func(t *testing.T, query string) {
			t.Helper()
			conn, err := pgx.Connect(t.Context(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(t.Context(), query); err != nil {
				t.Fatalf("%s: %v", query, err)
			}
		}
	})
}

// Reopening runs the migrations again; they must find nothing to do and keep the data.
func TestReopen(t *testing.T) {
	url := pgtest.Fresh(t, pgtest.URL(t))
	s, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateTenant(t.Context(), store.Tenant{ID: "t1", Kind: store.TenantTeam}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, url)
	if _, err := s.GetTenant(t.Context(), "t1"); err != nil {
		t.Fatalf("tenant lost across reopen: %v", err)
	}
	if n := count(t, url, `SELECT count(*) FROM schema_migrations WHERE version = 1`); n != 1 {
		t.Fatalf("migration 1 recorded %d times, want once", n)
	}
}

// Replicas start together: each migrates under the advisory lock, and all of them
// must come up on one schema.
func TestConcurrentOpen(t *testing.T) {
	url := pgtest.Fresh(t, pgtest.URL(t))
	const replicas = 8
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			s, err := postgres.Open(t.Context(), url)
			if err == nil {
				err = s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
}

// A schema migrated by a newer release must not be used, let alone "fixed", by an
// older binary.
func TestRefusesNewerSchema(t *testing.T) {
	url := pgtest.Fresh(t, pgtest.URL(t))
	open(t, url)
	if n := count(t, url, `INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_future.sql') RETURNING 1`); n != 1 {
		t.Fatalf("recording a future migration returned %d", n)
	}
	_, err := postgres.Open(t.Context(), url)
	if err == nil || !strings.Contains(err.Error(), "newer than this binary") {
		t.Fatalf("Open on a newer schema: error = %v, want one saying the schema is newer", err)
	}
}

// search_path decides where the store lives: two schemas, two separate stores.
func TestSearchPathSeparatesStores(t *testing.T) {
	base := pgtest.URL(t)
	a, b := open(t, pgtest.Fresh(t, base)), open(t, pgtest.Fresh(t, base))
	if err := a.CreateTenant(t.Context(), store.Tenant{ID: "t1", Kind: store.TenantTeam}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetTenant(t.Context(), "t1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("tenant of schema A read through schema B: err = %v, want ErrNotFound", err)
	}
}

// Open's errors end up in logs: a URL that does not parse must not be echoed, since
// that is where a best-effort password redaction is most likely to miss.
func TestOpenErrorHidesPassword(t *testing.T) {
	for _, url := range []string{
		"postgres://aegis:s3cret-pw@db.internal:notaport/aegis",
		"postgres://aegis:s3cret-pw@db.internal/aegis?connect_timeout=soon",
	} {
		_, err := postgres.Open(context.Background(), url)
		if err == nil {
			t.Fatalf("Open(%q) succeeded", url)
		}
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Fatalf("Open error repeats the password: %v", err)
		}
	}
}

// count runs a query returning one number on a connection of its own.
func count(t *testing.T, url, query string) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(t.Context(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}
