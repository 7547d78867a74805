package postgres_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
)

// A NOTIFY inside a transaction takes PostgreSQL's database-wide notification lock at
// commit and holds it across the commit's WAL flush, so every committing transaction
// that notified waits for the one before it. A rotation or an attestation commits one
// routine supersession each ("rotated", "refreshed"): notified from the transaction,
// they put every rotation in the system behind one lock. Only the entries that must
// reach every replica even if the replica that committed them dies right after
// (revocations and logouts) are notified by the transaction; the routine ones are
// announced by the committing replica after its commit (see the broadcast package).
func TestOnlyRevocationsNotifyFromTheTransaction(t *testing.T) {
	url := pgtest.Fresh(t, pgtest.URL(t))
	s := open(t, url)
	ctx := t.Context()

	listener, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(context.Background())
	var schema string
	if err := listener.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if _, err := listener.Exec(ctx, "LISTEN "+pgx.Identifier{broadcast.Channel(schema)}.Sanitize()); err != nil {
		t.Fatal(err)
	}

	now := time.Now().UTC().Truncate(time.Second)
	entries := []store.BlacklistEntry{
		{JTI: "jti-rotated", NodeID: "n-1", Reason: "rotated", ExpiresAt: now.Add(time.Hour), AddedAt: now},
		{JTI: "jti-refreshed", NodeID: "n-1", Reason: "refreshed", ExpiresAt: now.Add(time.Hour), AddedAt: now},
		{JTI: "jti-revoked", NodeID: "n-2", Reason: "revoked", ExpiresAt: now.Add(time.Hour), AddedAt: now},
		{JTI: "jti-logout", NodeID: "n-3", Reason: "logout", ExpiresAt: now.Add(time.Hour), AddedAt: now},
	}
	// One commit each, in this order: PostgreSQL delivers notifications in commit
	// order, so anything the first two sent would arrive before the third's.
	for _, e := range entries {
		if err := s.InTx(ctx, func(tx store.Tx) error { return tx.BlacklistToken(ctx, e) }); err != nil {
			t.Fatalf("blacklist %s: %v", e.JTI, err)
		}
	}
	var heard []string
	for len(heard) < 2 {
		wait, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := listener.WaitForNotification(wait)
		cancel()
		if err != nil {
			t.Fatalf("after %v: %v", heard, err)
		}
		var e broadcast.Event
		if err := json.Unmarshal([]byte(n.Payload), &e); err != nil {
			t.Fatal(err)
		}
		for _, tok := range e.Tokens {
			heard = append(heard, tok.JTI+"/"+tok.Reason)
		}
	}
	if heard[0] != "jti-revoked/revoked" || heard[1] != "jti-logout/logout" || len(heard) != 2 {
		t.Fatalf("the transactions notified %v, want only the revocation and the logout", heard)
	}
}
