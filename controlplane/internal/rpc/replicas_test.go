package rpc_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/reject"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
	"github.com/jackc/pgx/v5"
)

// replicas starts two control planes on one PostgreSQL schema, as two replicas
// behind a load balancer. PostgreSQL only: SQLite is one process.
func replicas(t *testing.T) (a, b *cptest.Server, dbURL string) {
	t.Helper()
	dbURL = pgtest.Fresh(t, pgtest.URL(t))
	a = cptest.Start(t, cptest.Options{DatabaseURL: dbURL})
	b = a.StartReplica(t, cptest.Options{})
	return a, b, dbURL
}

// onReplica enrolls a node through a and opens its stream on b.
func onReplica(t *testing.T, a, b *cptest.Server) (*node, *stream) {
	t.Helper()
	n := enroll(t, a, a.EnrollmentToken(t))
	n.client = b.ClusterClient()
	st := n.open(t, time.Now)
	st.hello()
	st.heartbeat()
	return n, st
}

func TestReplicasRevokeDropsStreamOnOtherReplica(t *testing.T) {
	a, b, _ := replicas(t)
	n, st := onReplica(t, a, b)

	resp, err := a.AdminClient().RevokeHost(context.Background(), connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: n.id}))
	returned := time.Now()
	if err != nil {
		t.Fatalf("RevokeHost on A: %v", err)
	}
	st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, returned, time.Second)
	if !resp.Msg.GetStreamDropped() {
		t.Errorf("RevokeHost answered stream_dropped false for a stream on the other replica")
	}
	revokedEverywhere(t, b, n)
}

func TestReplicasBlacklistReachesOtherReplica(t *testing.T) {
	a, b, _ := replicas(t)
	n := enroll(t, a, a.EnrollmentToken(t))
	old := n.token
	// B verifies the token first, so it is no stranger there.
	n.client = b.ClusterClient()
	n.open(t, time.Now).hello()

	n.client = a.ClusterClient()
	fresh, err := n.attest(t)
	if err != nil {
		t.Fatal(err)
	}
	attested := time.Now()

	// A new stream on B with the superseded token is refused as soon as the
	// notification has arrived (B checks its in-memory blacklist only).
	n.client = b.ClusterClient()
	n.token = old
	expectBlacklisted(t, n, attested, "the superseded token", "the attestation on A")
	n.token = fresh
	n.open(t, time.Now).hello()
}

// A rotation on A withdraws the old token on B as well: B reads the node's current key
// for a new stream, and A announces the "rotated" entry right after its commit (the
// transaction itself notifies only revocations).
func TestReplicasRotatedTokenRefusedOnOtherReplica(t *testing.T) {
	a, b, _ := replicas(t)
	n := enroll(t, a, a.EnrollmentToken(t))
	n.client = b.ClusterClient()
	n.open(t, time.Now).hello()

	n.client = a.ClusterClient()
	r := n.newRotation(t, time.Now())
	resp, err := n.rotate(t, r, time.Now())
	if err != nil {
		t.Fatalf("rotate on A: %v", err)
	}
	rotated := time.Now()

	n.client = b.ClusterClient()
	expectBlacklisted(t, n, rotated, "the rotated-out token", "the rotation on A")
	n.adopt(r, resp)
	n.open(t, time.Now).hello()
}

// expectBlacklisted opens new streams with n's token and key until one is refused
// TOKEN_BLACKLISTED, failing if any other refusal comes, or if streams are still
// welcomed a second after since (when what was withdrawn by event returned).
func expectBlacklisted(t *testing.T, n *node, since time.Time, what, event string) {
	t.Helper()
	for {
		st := n.open(t, time.Now)
		st.send(st.envelope(hello(), nil))
		cmd, err := st.recv()
		if err != nil {
			if r, _ := reject.From(err); r.GetReason() != edgev1.RejectReason_REJECT_REASON_TOKEN_BLACKLISTED {
				t.Fatalf("new stream on B with %s: %v, want TOKEN_BLACKLISTED", what, err)
			}
			t.Logf("refused on B %s after %s returned", time.Since(since), event)
			return
		}
		if cmd.GetWelcome() == nil {
			t.Fatalf("expected Welcome or a refusal, got %v", cmd)
		}
		st.cancel()
		if time.Since(since) > time.Second {
			t.Fatalf("B still accepts %s 1s after %s", what, event)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReplicasCommandsReachOtherReplica(t *testing.T) {
	a, b, _ := replicas(t)
	n, st := onReplica(t, a, b)

	if err := a.RequestTokenRefresh(n.id); err != nil {
		t.Fatalf("RequestTokenRefresh on A: %v", err)
	}
	cmd := recvWithin(t, st, time.Second)
	if cmd.GetRefreshToken() == nil {
		t.Fatalf("expected RefreshTokenCommand on B, got %v", cmd)
	}
	if err := a.RequestKeyRotation(n.id, 24*time.Hour); err != nil {
		t.Fatalf("RequestKeyRotation on A: %v", err)
	}
	cmd = recvWithin(t, st, time.Second)
	if cmd.GetRotateKey().GetKeepOld().AsDuration() != 24*time.Hour {
		t.Fatalf("expected RotateKeyCommand{keep_old 24h} on B, got %v", cmd)
	}

	other := enroll(t, a, a.EnrollmentToken(t))
	if err := a.RequestTokenRefresh(other.id); err == nil {
		t.Fatal("RequestTokenRefresh for a node with no stream anywhere succeeded")
	}
}

func TestReplicasSurviveLostListenConnection(t *testing.T) {
	a, b, dbURL := replicas(t)
	n, st := onReplica(t, a, b)

	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	listen := "LISTEN " + pgx.Identifier{broadcast.Channel(u.Query().Get("search_path"))}.Sanitize()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pids := func() map[int32]bool {
		rows, _ := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query = $2`, broadcast.ListenerApplicationName, listen)
		got, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			t.Fatal(err)
		}
		m := map[int32]bool{}
		for _, p := range got {
			m[p] = true
		}
		return m
	}
	before := pids()
	if len(before) != 2 {
		t.Fatalf("%d LISTEN connections, want one per replica", len(before))
	}
	for p := range before {
		if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", p); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		now := pids()
		fresh := 0
		for p := range now {
			if !before[p] {
				fresh++
			}
		}
		if fresh == 2 && len(now) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("LISTEN connections not re-opened within 10s: before %v, now %v", before, now)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if _, err := a.AdminClient().RevokeHost(ctx, connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: n.id})); err != nil {
		t.Fatalf("RevokeHost on A: %v", err)
	}
	st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, time.Now(), time.Second)
}

func recvWithin(t *testing.T, st *stream, limit time.Duration) *edgev1.EdgeCommand {
	t.Helper()
	type res struct {
		cmd *edgev1.EdgeCommand
		err error
	}
	got := make(chan res, 1)
	go func() { c, err := st.recv(); got <- res{c, err} }()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("stream ended: %v", r.err)
		}
		return r.cmd
	case <-time.After(limit):
		t.Fatalf("nothing arrived within %s", limit)
	}
	return nil
}
