package fleet

import (
	"errors"
	"fmt"
	"sync"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// maxBatchWrites bounds one batch: a whole wave of a parallel run fits.
const maxBatchWrites = 500

// errStopped: the driver stopped before the write was committed.
var errStopped = errors.New("fleet run driver stopped")

// recorder is the one writer of a run's host states and events. Host goroutines
// hand it their writes; it commits whatever has queued up in one transaction, then
// the next batch: while one batch commits, the next one gathers. A wave of hosts
// finishing together thus costs a few commits instead of one (or three, with the
// start and the event) per host, and events keep the order they were queued in.
type recorder struct {
	d    *driver
	in   chan *write
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

// write is one queued change: a host's state (from -> host.State), an event, or
// both (a host result and its event, which commit together).
type write struct {
	host  *store.FleetRunHost
	from  string
	event *store.FleetRunEvent
	err   chan error // buffered; receives the outcome once committed or refused
}

func newRecorder(d *driver) *recorder {
	r := &recorder{d: d, in: make(chan *write, maxBatchWrites), quit: make(chan struct{}), done: make(chan struct{})}
	go r.loop()
	return r
}

// stop ends the recorder once what is queued is written (or the driver's context
// has ended); later writes are refused with errStopped.
func (r *recorder) stop() {
	r.once.Do(func() { close(r.quit) })
	<-r.done
}

func (r *recorder) queue(w *write) func() error {
	w.err = make(chan error, 1)
	select {
	case r.in <- w:
	case <-r.quit:
		w.err <- errStopped
	}
	return func() error {
		select {
		case err := <-w.err:
			return err
		case <-r.done:
			select {
			case err := <-w.err:
				return err
			default:
				return errStopped
			}
		}
	}
}

// event queues ev.
func (r *recorder) event(ev store.FleetRunEvent) { r.queue(&write{event: &ev}) }

// start queues h's move from pending to running; the returned func waits for it.
func (r *recorder) start(h store.FleetRunHost) func() error {
	return r.queue(&write{host: &h, from: store.FleetHostPending})
}

// result queues h's outcome with its host_result event; the returned func waits.
func (r *recorder) result(h store.FleetRunHost, from string) func() error {
	ev, err := encodeEvent(r.d.id, h.FinishedAt, h)
	if err != nil {
		return func() error { return err }
	}
	return r.queue(&write{host: &h, from: from, event: &ev})
}

// flush waits until everything queued so far is committed (or refused).
func (r *recorder) flush() error {
	ev := r.queue(&write{})
	return ev()
}

func (r *recorder) loop() {
	defer close(r.done)
	for {
		var batch []*write
		select {
		case w := <-r.in:
			batch = append(batch, w)
		case <-r.quit:
			// Write what was queued before the stop, then refuse the rest.
			for {
				select {
				case w := <-r.in:
					batch = append(batch, w)
					continue
				default:
				}
				break
			}
			if len(batch) > 0 {
				r.commit(batch)
			}
			return
		}
	gather:
		for len(batch) < maxBatchWrites {
			select {
			case w := <-r.in:
				batch = append(batch, w)
			default:
				break gather
			}
		}
		r.commit(batch)
	}
}

// commit writes a batch in one transaction. A host write that finds the host in
// another state (ErrConflict, ErrNotFound) is refused alone, with its event; any
// other failure refuses the whole batch, whose writes the next driver redoes from
// the store's state.
func (r *recorder) commit(batch []*write) {
	d := r.d
	errs := make([]error, len(batch))
	err := d.e.cfg.Store.InTx(d.ctx, func(tx store.Tx) error {
		for i, w := range batch {
			errs[i] = nil
			if w.host != nil {
				err := tx.UpdateFleetRunHost(d.ctx, *w.host, w.from)
				if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
					errs[i] = fmt.Errorf("record host %s: %w", w.host.NodeID, err)
					continue
				}
				if err != nil {
					return fmt.Errorf("record host %s: %w", w.host.NodeID, err)
				}
			}
			if w.event != nil {
				if _, err := tx.AppendFleetRunEvent(d.ctx, *w.event); err != nil {
					return fmt.Errorf("record %s event: %w", w.event.Kind, err)
				}
			}
		}
		return nil
	})
	events := false
	for i, w := range batch {
		e := errs[i]
		if err != nil {
			e = err
		}
		if e != nil && d.ctx.Err() == nil && w.host != nil {
			d.log.Error("fleet run write not recorded", "node", w.host.NodeID, "state", w.host.State, "err", e)
		}
		if e == nil && w.event != nil {
			events = true
			if w.host != nil {
				d.e.cfg.Metrics.FleetRunHost(string(d.spec.Action), resultLabel(w.host.State))
			}
		}
		w.err <- e
	}
	if events {
		d.e.notify(d.id)
	}
}
