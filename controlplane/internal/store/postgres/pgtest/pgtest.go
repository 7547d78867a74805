// Package pgtest owns the test-side access to PostgreSQL: which database the tests
// use (AEGIS_TEST_POSTGRES_URL) and a throwaway schema per test, so that tests can
// run in parallel against one database and leave nothing behind.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable holding the base URL of a database tests may create
// schemas in.
const EnvURL = "AEGIS_TEST_POSTGRES_URL"

// connectTimeout bounds each connection attempt, so that an unreachable server
// fails the test instead of hanging it until the go test deadline.
const connectTimeout = 30 * time.Second

// URL returns the base URL from EnvURL, skipping the test when it is unset (a laptop
// without PostgreSQL). When it is set, whatever happens next must fail, never skip.
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvURL)
	if u == "" {
		t.Skip(EnvURL + " is not set")
	}
	return u
}

// Fresh creates a schema of its own for one test and returns base with search_path
// set to it (pgx passes unknown URL parameters as run-time parameters, so every
// connection of a pool opened on the URL uses the schema). The schema is dropped when
// the test ends, after cleanups registered later, such as closing a store, have run.
// A connection failure is a failure, never a skip: the caller chose to use base.
func Fresh(t testing.TB, base string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		// url.Error repeats the text, which may hold a password.
		t.Fatalf("%s does not parse as a URL", EnvURL)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "cp_test_" + hex.EncodeToString(b[:])
	ident := pgx.Identifier{schema}.Sanitize()

	exec(t, base, "CREATE SCHEMA "+ident)
	t.Cleanup(func() { exec(t, base, "DROP SCHEMA "+ident+" CASCADE") })

	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// exec runs one statement on a connection of its own. It uses no test context: it
// also runs in cleanups, after the test's context is cancelled.
func exec(t testing.TB, base, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("%s is set but unreachable: %v", EnvURL, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
