//lint:file-ignore SA1019 golang.org/x/net/http2 is deprecated in favour of http.Server, which cannot serve one connection from a goroutine of ours (see connServer)

package server

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// tlsHandshakeTimeout bounds a client's TLS handshake, as http.Server's
// ReadHeaderTimeout bounds it there: a connection that never finishes its hello
// costs a file descriptor for this long at most.
const tlsHandshakeTimeout = 10 * time.Second

// connServer accepts the listener's connections itself: it runs the TLS handshake and
// serves a connection that negotiated h2 with the HTTP/2 server directly, from the
// goroutine it started for it; anything else (HTTP/1.1: curl, a load balancer's
// probe) goes to the net/http server.
//
// Why not http.Server.ServeTLS: net/http serves an h2 connection from inside the
// goroutine that accepted it (conn.serve, then TLSNextProto), so that goroutine stays
// parked for the connection's whole life under about 4.4 KiB of frames, 1.1 KiB of
// them conn.serve's own. The runtime halves a parked goroutine's stack only while
// less than a quarter of it is in use, so each connection keeps a 16 KiB stack. From
// a goroutine of our own the same connection parks under about 3.4 KiB and its stack
// shrinks to 8 KiB: 8 KiB less per connected daemon, 80 MB at 10,000 (measured with
// aegis-loadtest connect; see docs/operational-patterns.md).
//
// golang.org/x/net/http2 is the implementation net/http bundles; its package is marked
// deprecated in favour of http.Server, which offers no way to serve one connection.
type connServer struct {
	ln  net.Listener
	tls *tls.Config
	h1  *http.Server
	h2  *http2.Server
	// base is every h2 connection's context, as http.Server.BaseContext is for h1.
	base context.Context
	log  *slog.Logger
	// h1ln hands the HTTP/1.1 connections to h1.
	h1ln *connQueue
	// handshakeTimeout is tlsHandshakeTimeout, shorter in tests.
	handshakeTimeout time.Duration

	mu     sync.Mutex
	conns  map[*tls.Conn]struct{} // h2 connections being served
	closed bool
	wg     sync.WaitGroup // one per accepted connection
}

// newConnServer serves ln with h1, whose HTTP2 settings configure the h2 side too.
func newConnServer(ln net.Listener, tlsConf *tls.Config, h1 *http.Server, base context.Context, log *slog.Logger) (*connServer, error) {
	h2 := &http2.Server{}
	// Registers h2's graceful shutdown (GOAWAY on every connection it serves) as an
	// h1.Shutdown hook, so one Shutdown drains both.
	if err := http2.ConfigureServer(h1, h2); err != nil {
		return nil, err
	}
	return &connServer{
		ln: ln, tls: tlsConf, h1: h1, h2: h2, base: base, log: log,
		h1ln:             newConnQueue(ln.Addr()),
		handshakeTimeout: tlsHandshakeTimeout,
		conns:            map[*tls.Conn]struct{}{},
	}, nil
}

// Serve accepts until the listener is closed; it returns http.ErrServerClosed after
// Shutdown or Close, like http.Server.Serve.
func (cs *connServer) Serve() error {
	h1done := make(chan error, 1)
	go func() { h1done <- cs.h1.Serve(cs.h1ln) }()
	var delay time.Duration
	for {
		raw, err := cs.ln.Accept()
		if err != nil {
			if cs.isClosed() {
				<-h1done
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors or the like: wait a little, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				cs.log.Warn("accept failed; retrying", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			_ = cs.h1.Close()
			<-h1done
			return err
		}
		delay = 0
		cs.wg.Add(1)
		go cs.handle(raw)
	}
}

// handle runs one connection's handshake and then serves it, on its own goroutine.
func (cs *connServer) handle(raw net.Conn) {
	defer cs.wg.Done()
	tc := tls.Server(raw, cs.tls)
	_ = tc.SetDeadline(time.Now().Add(cs.handshakeTimeout))
	if err := tc.HandshakeContext(cs.base); err != nil {
		// A port scan or a client that does not trust our CA: not ours to log above debug.
		cs.log.Debug("TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		_ = tc.Close()
		return
	}
	_ = tc.SetDeadline(time.Time{})
	if tc.ConnectionState().NegotiatedProtocol != http2.NextProtoTLS {
		if !cs.h1ln.push(tc) {
			_ = tc.Close()
		}
		return
	}
	if !cs.track(tc) {
		_ = tc.Close()
		return
	}
	defer cs.untrack(tc)
	ctx := context.WithValue(cs.base, http.LocalAddrContextKey, tc.LocalAddr())
	cs.h2.ServeConn(tc, &http2.ServeConnOpts{Context: ctx, BaseConfig: cs.h1, Handler: cs.h1.Handler})
	_ = tc.Close()
}

func (cs *connServer) track(tc *tls.Conn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return false
	}
	cs.conns[tc] = struct{}{}
	return true
}

func (cs *connServer) untrack(tc *tls.Conn) {
	cs.mu.Lock()
	delete(cs.conns, tc)
	cs.mu.Unlock()
}

func (cs *connServer) isClosed() bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.closed
}

// stopAccepting closes the listener: no new connection from now on.
func (cs *connServer) stopAccepting() {
	cs.mu.Lock()
	cs.closed = true
	cs.mu.Unlock()
	_ = cs.ln.Close()
}

// Shutdown stops accepting, tells every connection to finish (GOAWAY on h2, idle
// close on h1) and waits until all have ended or ctx does; then it closes what is
// left and returns ctx's error.
func (cs *connServer) Shutdown(ctx context.Context) error {
	cs.stopAccepting()
	err := cs.h1.Shutdown(ctx) // closes h1ln and runs h2's GOAWAY hook
	done := make(chan struct{})
	go func() { cs.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		cs.Close()
		<-done
		err = errors.Join(err, ctx.Err())
	}
	return err
}

// Close closes the listener and every connection at once.
func (cs *connServer) Close() {
	cs.stopAccepting()
	_ = cs.h1.Close()
	cs.mu.Lock()
	for tc := range cs.conns {
		_ = tc.Close()
	}
	cs.mu.Unlock()
}

// connQueue is the net.Listener h1 serves: it yields the HTTP/1.1 connections
// connServer hands it, already past their TLS handshake.
type connQueue struct {
	addr net.Addr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to h1; false once the queue is closed.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }
