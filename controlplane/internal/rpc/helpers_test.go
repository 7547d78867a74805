package rpc_test

import (
	"crypto/ed25519"
	"testing"

	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

func signWith(priv []byte, nonce, tokenID string, pub []byte) []byte {
	return ed25519.Sign(ed25519.PrivateKey(priv), seal.EnrollMessage(nonce, tokenID, pub))
}

// forEachStore is cptest.ForEachStore: SQLite, and PostgreSQL when configured.
func forEachStore(t *testing.T, fn func(t *testing.T, opts cptest.Options)) {
	cptest.ForEachStore(t, fn)
}
