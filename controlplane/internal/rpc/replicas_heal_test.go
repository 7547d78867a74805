package rpc_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/nodeauth"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
	"github.com/jackc/pgx/v5"
)

// revokeInStore commits a revocation the way the revocation service does (the node
// revoked, its live tokens blacklisted, one transaction) but straight through the
// store: no replica code runs after the commit, so whatever the other replicas
// learn, they learn from the transaction itself.
func revokeInStore(t *testing.T, st store.Store, nodeID string) {
	t.Helper()
	ctx := context.Background()
	now := time.Now().UTC()
	err := st.InTx(ctx, func(tx store.Tx) error {
		if err := tx.RevokeDaemon(ctx, nodeID, now); err != nil {
			return err
		}
		active, err := tx.ActiveNodeTokens(ctx, nodeID, now)
		if err != nil {
			return err
		}
		if len(active) == 0 {
			t.Fatal("the node has no live token to blacklist")
		}
		for _, tok := range active {
			if err := tx.BlacklistToken(ctx, store.BlacklistEntry{JTI: tok.JTI, NodeID: nodeID,
				Reason: nodeauth.BlacklistReasonRevoked, ExpiresAt: tok.ExpiresAt, AddedAt: now}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("revoke in store: %v", err)
	}
}

// The notification is part of the transaction: a revocation committed with no
// publishing code after it still drops the stream another replica holds.
func TestReplicasHearCommittedRevocationFromTheTransaction(t *testing.T) {
	a, b, _ := replicas(t)
	n, st := onReplica(t, a, b)

	revokeInStore(t, a.Store, n.id)
	st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, time.Now(), time.Second)
}

// A notification that never arrives (here: the database sends none) is healed by
// the periodic re-read of the blacklist: the stream on the other replica is dropped
// within the re-warm interval.
func TestReplicasMissedRevocationHealsByRewarm(t *testing.T) {
	dbURL := pgtest.Fresh(t, pgtest.URL(t))
	const rewarm = 300 * time.Millisecond
	a := cptest.Start(t, cptest.Options{DatabaseURL: dbURL, RewarmInterval: rewarm})
	b := a.StartReplica(t, cptest.Options{RewarmInterval: rewarm})
	n, st := onReplica(t, a, b)

	// Silence the database's notifications for this schema only.
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	table := pgx.Identifier{u.Query().Get("search_path"), "token_blacklist"}.Sanitize()
	if _, err := conn.Exec(ctx, "ALTER TABLE "+table+" DISABLE TRIGGER USER"); err != nil {
		t.Fatal(err)
	}

	revokeInStore(t, a.Store, n.id)
	committed := time.Now()
	// The bound: one re-warm interval (jittered by at most a quarter) plus the
	// time to read the blacklist; 2s leaves room for a loaded machine.
	st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, committed, rewarm+2*time.Second)
}
