package rpc_test

import (
	"crypto/ed25519"
	"os"
	"testing"

	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
)

func signWith(priv []byte, nonce, tokenID string, pub []byte) []byte {
	return ed25519.Sign(ed25519.PrivateKey(priv), seal.EnrollMessage(nonce, tokenID, pub))
}

// forEachStore runs fn on SQLite, and on PostgreSQL when AEGIS_TEST_POSTGRES_URL is
// set (each run in a fresh schema).
func forEachStore(t *testing.T, fn func(t *testing.T, opts cptest.Options)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, cptest.Options{}) })
	if url := os.Getenv(pgtest.EnvURL); url != "" {
		t.Run("postgres", func(t *testing.T) {
			fn(t, cptest.Options{DatabaseURL: pgtest.Fresh(t, url)})
		})
	}
}
