package rpc_test

import (
	"context"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/broadcast"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres/pgtest"
	"github.com/jackc/pgx/v5"
)

// cutProxy forwards TCP to a database and can cut it: every open connection is
// closed and new ones are refused until Restore, as when the network to the
// database goes away. The shared server itself is never touched.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.Cut() })
	return p
}

func (p *cutProxy) Addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.mu.Unlock()
		go p.forward(c)
	}
}

func (p *cutProxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// Cut closes every connection and refuses new ones.
func (p *cutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore lets connections through again.
func (p *cutProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// proxiedReplicas starts two replicas whose every database connection (store and
// LISTEN) goes through a proxy the test can cut.
func proxiedReplicas(t *testing.T, hb time.Duration) (a, b *cptest.Server, p *cutProxy) {
	t.Helper()
	direct := pgtest.Fresh(t, pgtest.URL(t))
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	p = newCutProxy(t, u.Host)
	u.Host = p.Addr()
	a = cptest.Start(t, cptest.Options{DatabaseURL: u.String(), HeartbeatInterval: hb})
	b = a.StartReplica(t, cptest.Options{HeartbeatInterval: hb})
	return a, b, p
}

// statusWithin polls GetHost through srv until the host reads want, while the
// daemon keeps heartbeating; it fails after limit.
func statusWithin(t *testing.T, srv *cptest.Server, st *stream, want edgev1.HostStatus, since time.Time, limit time.Duration) {
	t.Helper()
	for {
		resp, err := srv.AdminClient().GetHost(context.Background(), connect.NewRequest(&edgev1.GetHostRequest{NodeId: st.n.id}))
		if err == nil && resp.Msg.GetHost().GetStatus() == want {
			return
		}
		if time.Since(since) > limit {
			t.Fatalf("host %s is not %s %s after the fault ended (last answer %v, %v)", st.n.id, want, time.Since(since), resp.Msg.GetHost().GetStatus(), err)
		}
		st.heartbeat()
		time.Sleep(100 * time.Millisecond)
	}
}

// The database is unreachable for a few seconds while a daemon's stream stays
// live; once it is back, the host reads Connected through either replica within
// one heartbeat interval, and the replicas hear each other again.
func TestFaultDatabaseCutStatusHeals(t *testing.T) {
	const hb = time.Second
	a, b, proxy := proxiedReplicas(t, hb)
	n, st := onReplica(t, a, b)
	statusWithin(t, a, st, edgev1.HostStatus_HOST_STATUS_CONNECTED, time.Now(), 5*time.Second)

	proxy.Cut()
	cutUntil := time.Now().Add(3 * time.Second)
	for time.Now().Before(cutUntil) {
		st.heartbeat() // the stream does not need the database to stay up
		time.Sleep(200 * time.Millisecond)
	}
	proxy.Restore()
	restored := time.Now()

	// One heartbeat interval, plus room for the pools to reconnect on a loaded
	// machine.
	statusWithin(t, a, st, edgev1.HostStatus_HOST_STATUS_CONNECTED, restored, hb+3*time.Second)
	statusWithin(t, b, st, edgev1.HostStatus_HOST_STATUS_CONNECTED, restored, hb+3*time.Second)

	// The LISTEN connections came back (their backoff is capped at 5s): a
	// revocation through A reaches the stream on B.
	if _, err := a.AdminClient().RevokeHost(context.Background(), connect.NewRequest(&edgev1.RevokeHostRequest{NodeId: n.id})); err != nil {
		t.Fatalf("RevokeHost on A after the cut: %v", err)
	}
	st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, time.Now(), 7*time.Second)
}

// The LISTEN connections are dropped and a revocation commits before they are back:
// it still reaches the stream on the other replica (the resync after the re-open
// re-reads the blacklist), and a bystander host's status stays true.
func TestFaultListenDroppedRevocationHeals(t *testing.T) {
	a, b, dbURL := replicas(t)
	n, st := onReplica(t, a, b)
	_, other := onReplica(t, a, b)

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
	listen := "LISTEN " + pgx.Identifier{broadcast.Channel(u.Query().Get("search_path"))}.Sanitize()
	tag, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND query = $2`,
		broadcast.ListenerApplicationName, listen)
	if err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("terminate the LISTEN connections: %v (%d)", err, tag.RowsAffected())
	}
	// Committed with no publishing code, while nobody may be listening.
	revokeInStore(t, a.Store, n.id)
	dropped := time.Now()
	// The re-open's backoff starts at 50ms and the resync follows it.
	st.expectDisconnect(edgev1.DisconnectReason_DISCONNECT_REASON_REVOKED, dropped, 3*time.Second)
	statusWithin(t, a, other, edgev1.HostStatus_HOST_STATUS_CONNECTED, dropped, 10*time.Second+time.Second)
}

// A daemon moves from one replica to another (the first shuts down): its host
// reads Connected through either replica within one heartbeat interval of the new
// stream, and the old replica's cleanup does not clear the new row.
func TestFaultDaemonMovesBetweenReplicas(t *testing.T) {
	const hb = time.Second
	dbURL := pgtest.Fresh(t, pgtest.URL(t))
	a := cptest.Start(t, cptest.Options{DatabaseURL: dbURL, HeartbeatInterval: hb})
	b := a.StartReplica(t, cptest.Options{HeartbeatInterval: hb})
	n, st := onReplica(t, a, b)
	statusWithin(t, a, st, edgev1.HostStatus_HOST_STATUS_CONNECTED, time.Now(), 5*time.Second)

	b.Stop()
	if cmd, err := st.recv(); err != nil || cmd.GetDisconnect().GetReason() != edgev1.DisconnectReason_DISCONNECT_REASON_SHUTDOWN {
		t.Fatalf("stream on the stopping replica: %v %v, want Disconnect{SHUTDOWN}", cmd, err)
	}
	n.client = a.ClusterClient()
	moved := n.open(t, time.Now)
	moved.hello()
	opened := time.Now()
	statusWithin(t, a, moved, edgev1.HostStatus_HOST_STATUS_CONNECTED, opened, hb+2*time.Second)
	d, err := a.Store.GetDaemon(context.Background(), n.id)
	if err != nil {
		t.Fatal(err)
	}
	if d.SessionReplica == "" || d.SessionID == "" {
		t.Fatalf("session row after the move = (%q, %q), want the new stream on A", d.SessionID, d.SessionReplica)
	}
}
