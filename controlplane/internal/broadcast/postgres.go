package broadcast

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/api/backoff"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres is the Bus of replicas sharing one PostgreSQL database. Events are
// published with pg_notify on a small pool of their own and received on one
// dedicated LISTEN connection, which is re-opened with backoff whenever it drops;
// after each re-open the Handler resyncs, since notifications sent while nobody
// listened are gone.
//
// The channel is named for the schema (the connection's current_schema), so that
// control planes on different schemas of one database (tests do this) do not hear
// each other.
type Postgres struct {
	replica string
	channel string
	connCfg *pgx.ConnConfig
	pool    *pgxpool.Pool
	log     *slog.Logger

	// listen is the open LISTEN connection, handed from OpenPostgres to Run.
	listen *pgx.Conn

	// queue feeds the publisher; stop ends it and stopped reports it has.
	queue   chan *publication
	stop    chan struct{}
	stopped chan struct{}
	closing sync.Once
}

// publication is one Publish call waiting for the transaction that carries it.
type publication struct {
	payloads []string
	done     chan error
}

var _ Bus = (*Postgres)(nil)

const (
	// publishConns bounds the connections publishing takes from the database: the
	// publisher is their only user, one transaction at a time.
	publishConns = 1
	// maxBatch bounds the notifications one publishing transaction carries.
	maxBatch = 256
	// backoff bounds the wait between attempts to re-open the LISTEN connection.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
	// publishTimeout bounds one pg_notify.
	publishTimeout = 5 * time.Second
)

// ListenerApplicationName is the application_name of the LISTEN connection, so an
// operator can tell it apart in pg_stat_activity.
const ListenerApplicationName = "aegis-edge-listener"

// OpenPostgres connects to url (as the store does) for replica and starts listening,
// so that no event published after it returns is missed.
func OpenPostgres(ctx context.Context, url, replica string, log *slog.Logger) (*Postgres, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errors.New("broadcast: the database URL does not parse")
	}
	pcfg.MaxConns = publishConns
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("broadcast: %w", err)
	}
	var schema string
	if err := pool.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		pool.Close()
		return nil, fmt.Errorf("broadcast: current schema: %w", err)
	}
	ccfg := pcfg.ConnConfig.Copy()
	ccfg.RuntimeParams["application_name"] = ListenerApplicationName
	p := &Postgres{replica: replica, channel: Channel(schema), connCfg: ccfg, pool: pool, log: log,
		queue: make(chan *publication, maxBatch), stop: make(chan struct{}), stopped: make(chan struct{})}
	if p.listen, err = p.connect(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	go p.publisher()
	return p, nil
}

// Channel is the NOTIFY channel of the control plane whose tables are in schema.
func Channel(schema string) string {
	c := "aegis_edge_" + schema
	if len(c) > 63 { // PostgreSQL truncates identifiers to 63 bytes
		c = c[:63]
	}
	return c
}

func (p *Postgres) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, p.connCfg)
	if err != nil {
		return nil, fmt.Errorf("broadcast: connect: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{p.channel}.Sanitize()); err != nil {
		_ = conn.Close(ctx)
		return nil, fmt.Errorf("broadcast: listen: %w", err)
	}
	return conn, nil
}

// Shared is true: other replicas may hold the stream.
func (p *Postgres) Shared() bool { return true }

// Publish sends e (split to fit the payload limit) and returns once the transaction
// that notifies it has committed, or with why it did not.
//
// Concurrent calls share one transaction: PostgreSQL holds its database-wide
// notification lock from a notifying transaction's commit until the commit is
// done, so notifying transactions commit one at a time, and one per event would
// bound every replica's events (and the rotations announcing theirs) by that
// rate. A single publisher takes whatever is queued, up to maxBatch, into each
// transaction, in the order the calls arrived; the transaction commits with
// synchronous_commit off, since it writes nothing that must survive a crash (a
// notification is never durable: a listener that was away resyncs).
func (p *Postgres) Publish(ctx context.Context, e Event) error {
	e.Origin = p.replica
	pub := &publication{done: make(chan error, 1)}
	for _, part := range Split(e) {
		payload, err := Encode(part)
		if err != nil {
			return err
		}
		pub.payloads = append(pub.payloads, payload)
	}
	timeout := time.NewTimer(publishTimeout)
	defer timeout.Stop()
	select {
	case p.queue <- pub:
	case <-p.stop:
		return fmt.Errorf("broadcast: notify %s: the bus is closed", e.Kind)
	case <-timeout.C:
		return fmt.Errorf("broadcast: notify %s: the publisher is %s behind", e.Kind, publishTimeout)
	}
	select {
	case err := <-pub.done:
		if err != nil {
			return fmt.Errorf("broadcast: notify %s: %w", e.Kind, err)
		}
		return nil
	case <-p.stopped:
		select {
		case err := <-pub.done: // its batch was the publisher's last
			if err != nil {
				return fmt.Errorf("broadcast: notify %s: %w", e.Kind, err)
			}
			return nil
		default:
			return fmt.Errorf("broadcast: notify %s: the bus is closed", e.Kind)
		}
	case <-timeout.C:
		// The transaction may still commit; the others then hear it late.
		return fmt.Errorf("broadcast: notify %s: not committed within %s", e.Kind, publishTimeout)
	}
}

// publisher commits the queued publications, as many per transaction as are waiting,
// until the bus is closed.
func (p *Postgres) publisher() {
	defer close(p.stopped)
	for {
		var batch []*publication
		select {
		case pub := <-p.queue:
			batch = append(batch, pub)
		case <-p.stop:
			return
		}
		n := len(batch[0].payloads)
	fill:
		for n < maxBatch {
			select {
			case pub := <-p.queue:
				batch = append(batch, pub)
				n += len(pub.payloads)
			default:
				break fill
			}
		}
		err := p.notify(batch)
		for _, pub := range batch {
			pub.done <- err
		}
	}
}

// notify sends the batch's payloads, in order, in one transaction and one round trip.
// PostgreSQL folds identical notifications of one transaction into one; two events
// are identical only if they say the same thing at the same nanosecond.
func (p *Postgres) notify(batch []*publication) error {
	var payloads []string
	for _, pub := range batch {
		payloads = append(payloads, pub.payloads...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	// The rows, and so the notifications, keep the array's order.
	b.Queue("SELECT pg_notify($1, payload) FROM unnest($2::text[]) WITH ORDINALITY AS u(payload, n) ORDER BY n",
		p.channel, payloads)
	b.Queue("COMMIT")
	br := p.pool.SendBatch(ctx, b)
	var err error
	for range b.Len() {
		if _, err = br.Exec(); err != nil {
			break
		}
	}
	// A failed statement leaves the transaction open; the pool then discards the
	// connection rather than reuse it.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// Run delivers other replicas' events to h until ctx ends, re-opening the LISTEN
// connection with backoff whenever it fails and resyncing h after each re-open.
func (p *Postgres) Run(ctx context.Context, h Handler) {
	conn := p.listen
	p.listen = nil
	retry := backoff.Policy{Min: minBackoff, Max: maxBackoff}
	failures := 0
	for {
		if conn == nil {
			var err error
			if conn, err = p.connect(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				wait := retry.Delay(failures)
				failures++
				p.log.Warn("broadcast: LISTEN connection failed; retrying", "err", err, "in", wait.Round(time.Millisecond))
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				continue
			}
			failures = 0
			p.log.Info("broadcast: LISTEN connection re-opened; resyncing")
			if err := h.Resync(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn("broadcast: resync after reconnect", "err", err)
			}
		}
		err := p.receive(ctx, conn, h)
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(closeCtx)
		cancel()
		conn = nil
		if ctx.Err() != nil {
			return
		}
		p.log.Warn("broadcast: LISTEN connection lost; reconnecting", "err", err)
	}
}

func (p *Postgres) receive(ctx context.Context, conn *pgx.Conn, h Handler) error {
	own := originMarker(p.replica)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if hasOrigin(n.Payload, own) {
			continue // this replica acted before publishing
		}
		e, err := Decode(n.Payload)
		if err != nil {
			p.log.Warn("broadcast: ignoring a notification", "err", err)
			continue
		}
		if e.Origin == p.replica {
			continue // this replica acted before publishing
		}
		h.Handle(ctx, e)
	}
}

// Close stops the publisher (a Publish waiting then fails) and releases the
// publishing pool (and a LISTEN connection Run never took).
func (p *Postgres) Close() {
	p.closing.Do(func() {
		// A Publish still queued sees the publisher stopped and fails.
		close(p.stop)
		<-p.stopped
		if p.listen != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = p.listen.Close(ctx)
			cancel()
			p.listen = nil
		}
		p.pool.Close()
	})
}
