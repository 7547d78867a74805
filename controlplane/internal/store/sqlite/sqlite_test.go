package sqlite_test

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
	"github.com/aegis-edge/aegis/controlplane/internal/store/storetest"
)

func open(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, filepath.Join(t.TempDir(), "aegis.db"))
	})
}

func TestAuditTamper(t *testing.T) {
	storetest.RunAuditTamper(t, func(t *testing.T) (store.Store, storetest.Tamper) {
		path := filepath.Join(t.TempDir(), "aegis.db")
		s := open(t, path)
		// A connection of its own, as the sqlite3 shell would be.
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		return s, func(t *testing.T, query string) {
			t.Helper()
			if _, err := db.ExecContext(t.Context(), query); err != nil {
				t.Fatalf("%s: %v", query, err)
			}
		}
	})
}

func TestMemory(t *testing.T) {
	s := open(t, ":memory:")
	if err := s.CreateTenant(t.Context(), store.Tenant{ID: "t1", Kind: store.TenantTeam}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTenant(t.Context(), "t1"); err != nil {
		t.Fatalf("read back from the in-memory database: %v", err)
	}
}

// The file holds signing keys: it must not be readable by others whatever the umask,
// and an awkward path must not be misread as DSN parameters.
func TestFileModeAndAwkwardPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dir with space", "a?b#c%d.db")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	open(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("database not created at %q: %v", path, err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Fatalf("database file mode = %v, want 0600", mode)
	}
}

// Reopening runs the migrations again; they must find nothing to do and keep the data.
func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "aegis.db")
	s, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateTenant(t.Context(), store.Tenant{ID: "t1", Kind: store.TenantTeam}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	if _, err := s.GetTenant(t.Context(), "t1"); err != nil {
		t.Fatalf("tenant lost across reopen: %v", err)
	}
}
