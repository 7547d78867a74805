package broadcast

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
}

var _ Bus = (*Postgres)(nil)

const (
	// publishConns bounds the connections publishing takes from the database.
	publishConns = 4
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
	p := &Postgres{replica: replica, channel: Channel(schema), connCfg: ccfg, pool: pool, log: log}
	if p.listen, err = p.connect(ctx); err != nil {
		pool.Close()
		return nil, err
	}
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

// Publish sends e (split to fit the payload limit) with pg_notify.
func (p *Postgres) Publish(ctx context.Context, e Event) error {
	e.Origin = p.replica
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	for _, part := range Split(e) {
		payload, err := Encode(part)
		if err != nil {
			return err
		}
		if _, err := p.pool.Exec(ctx, "SELECT pg_notify($1, $2)", p.channel, payload); err != nil {
			return fmt.Errorf("broadcast: notify %s: %w", e.Kind, err)
		}
	}
	return nil
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
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
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

// Close releases the publishing pool (and a LISTEN connection Run never took).
func (p *Postgres) Close() {
	if p.listen != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = p.listen.Close(ctx)
		cancel()
		p.listen = nil
	}
	p.pool.Close()
}
