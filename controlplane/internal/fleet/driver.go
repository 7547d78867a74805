package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/session"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/toolcall"
)

// retryEvery paces the retries of a command a stream could not take yet (its
// queue was full, or the host was between streams).
const retryEvery = 100 * time.Millisecond

// Messages a host result carries. A failure says what to do next; a rotation that
// did not complete heals itself on the host, so none says "manual intervention".
const (
	msgRotated   = "rotated (old key archived; new token bound)"
	msgRefreshed = "token refreshed"
)

// driver drives one run on this replica while it holds the run's lease.
type driver struct {
	e       *Engine
	id      string
	ctx     context.Context // ends at Stop or when the lease is lost
	stop    context.CancelFunc
	resumed bool
	log     *slog.Logger

	cancelOnce sync.Once
	cancelled  chan struct{}

	rec  store.FleetRun
	spec Spec
	// resumeUntil: until when a resumed driver waits for hosts to reconnect.
	resumeUntil time.Time

	// writes records host states and events in batches (recorder.go).
	writes *recorder

	mu       sync.Mutex
	failures int
}

func (d *driver) cancelRequested() { d.cancelOnce.Do(func() { close(d.cancelled) }) }

// haltReason says why no further host may start ("" while they may).
func (d *driver) haltReason() string {
	select {
	case <-d.cancelled:
		return "cancelled"
	default:
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.spec.StopAfter > 0 && d.failures >= d.spec.StopAfter {
		return d.spec.haltedReason()
	}
	return ""
}

func (d *driver) run() {
	d.log = d.e.cfg.Logger.With("run", d.id)
	// Whatever happens, a run this replica stops driving is free for the next one.
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := d.e.cfg.Store.ReleaseFleetRunLease(ctx, d.id, d.e.cfg.ReplicaID); err != nil {
			d.log.Warn("release fleet run lease", "err", err)
		}
	}()
	if err := d.drive(); err != nil && d.ctx.Err() == nil {
		// The run stays running in the store; the lease lapses and the resume loop
		// (here or on another replica) picks it up again.
		d.log.Error("fleet run driver stopped", "err", err)
	}
}

func (d *driver) drive() error {
	st := d.e.cfg.Store
	rec, err := st.GetFleetRun(d.ctx, d.id)
	if err != nil {
		return err
	}
	if rec.State != store.FleetRunRunning {
		return nil
	}
	d.rec = rec
	if d.spec, err = decodeSpec(rec); err != nil {
		return err
	}
	if !rec.CancelRequestedAt.IsZero() {
		d.cancelRequested()
	}
	if d.resumed {
		d.resumeUntil = time.Now().Add(d.e.cfg.ResumeGrace)
	}
	hosts, err := st.ListFleetRunHosts(d.ctx, d.id)
	if err != nil {
		return err
	}
	events, err := st.ListFleetRunEvents(d.ctx, d.id, 0)
	if err != nil {
		return err
	}
	waveStarted := map[int]bool{}
	for _, rec := range events {
		if rec.Kind == KindWaveStarted {
			ev, err := decodeEvent(rec)
			if err != nil {
				return err
			}
			waveStarted[ev.WaveStarted.Wave] = true
		}
	}
	for _, h := range hosts {
		if h.State == store.FleetHostFailed {
			d.failures++
		}
	}

	leaseDone := make(chan struct{})
	defer close(leaseDone)
	go d.keepLease(leaseDone)
	d.writes = newRecorder(d)
	defer d.writes.stop()

	// Under on-error=continue a wave is a window, not a barrier: at most a wave's
	// size of hosts are in flight, and as soon as one finishes the next host starts,
	// from this wave or the next, so one slow host holds only its own slot (for at
	// most the deadline) instead of the whole fleet. "[wave N] starting" is announced
	// when wave N's first host is about to start. Under stop-after and fail-fast the
	// next wave waits for this one's outcomes, which decide whether it starts at all.
	slots := make(chan struct{}, windowOf(hosts))
	barrier := d.spec.StopAfter > 0
	var wg sync.WaitGroup
	for start := 0; start < len(hosts); {
		end := start
		for end < len(hosts) && hosts[end].Wave == hosts[start].Wave {
			end++
		}
		wave := hosts[start:end]
		start = end
		var todo []store.FleetRunHost
		for _, h := range wave {
			if h.State == store.FleetHostPending || h.State == store.FleetHostRunning {
				todo = append(todo, h)
			}
		}
		if len(todo) == 0 {
			continue
		}
		if err := d.ctx.Err(); err != nil {
			break
		}
		if d.haltReason() != "" {
			break
		}
		announced := waveStarted[wave[0].Wave]
		for _, h := range todo {
			select {
			case slots <- struct{}{}:
			case <-d.ctx.Done():
			}
			if d.ctx.Err() != nil {
				break
			}
			// A host already in flight at a resume finishes whatever the policy
			// says; a pending one starts only while the run may go on.
			if h.State == store.FleetHostPending && d.haltReason() != "" {
				<-slots
				continue
			}
			if !announced {
				announced = true
				if err := d.append(WaveStarted{Wave: wave[0].Wave, Hosts: len(wave), TotalHosts: len(hosts)}); err != nil {
					<-slots
					wg.Wait()
					return err
				}
			}
			if h.State == store.FleetHostPending {
				h.StartedAt = d.e.cfg.Now().UTC()
			}
			wg.Go(func() {
				defer func() { <-slots }()
				d.host(h)
			})
		}
		if barrier {
			wg.Wait()
		}
	}
	wg.Wait()
	if err := d.ctx.Err(); err != nil {
		return err
	}
	return d.finish()
}

// windowOf is how many hosts may be in flight at once: the largest wave of the plan
// (a rolling run's batch, 1 for sequential, the server's cap for parallel).
func windowOf(hosts []store.FleetRunHost) int {
	most, run := 1, 0
	for i, h := range hosts {
		if i > 0 && h.Wave != hosts[i-1].Wave {
			run = 0
		}
		run++
		most = max(most, run)
	}
	return most
}

// finish marks the hosts that never started and ends the run, with its last event
// in the same transaction, so a watcher never waits for an event that cannot come.
func (d *driver) finish() error {
	st := d.e.cfg.Store
	halted := d.haltReason()
	if err := d.writes.flush(); err != nil {
		return err
	}
	hosts, err := st.ListFleetRunHosts(d.ctx, d.id)
	if err != nil {
		return err
	}
	reason := "halted"
	if halted == "cancelled" {
		reason = "cancelled"
	}
	var pending []func() error
	for i, h := range hosts {
		if h.State != store.FleetHostPending && h.State != store.FleetHostRunning {
			continue
		}
		if h.State == store.FleetHostRunning || halted == "" {
			// Only reachable when a host's goroutine stopped without a result.
			return fmt.Errorf("host %s still %s at the end of the run", h.NodeID, h.State)
		}
		h.State, h.Reason, h.FinishedAt = store.FleetHostNotStarted, reason, d.e.cfg.Now().UTC()
		h.Message = "not started: the run " + map[string]string{"halted": "halted (" + halted + ")", "cancelled": "was cancelled"}[reason]
		hosts[i] = h
		pending = append(pending, d.writes.result(h, store.FleetHostPending))
	}
	for _, wait := range pending {
		if err := wait(); err != nil {
			return err
		}
	}
	counts := countsOf(hosts)
	state := store.FleetRunSucceeded
	switch {
	case halted == "cancelled":
		state = store.FleetRunCancelled
	case counts.Failed > 0 || halted != "":
		state = store.FleetRunFailed
	}
	now := d.e.cfg.Now().UTC()
	rec := d.rec
	rec.State, rec.HaltedReason, rec.FinishedAt, rec.LeaseOwner, rec.LeaseUntil = state, halted, now, "", time.Time{}
	run := runOf(rec, d.spec, hosts)
	ev, err := encodeEvent(d.id, now, RunFinished{Run: run, Elapsed: now.Sub(d.rec.CreatedAt)})
	if err != nil {
		return err
	}
	d.e.runEnding(d.id)
	err = st.InTx(d.ctx, func(tx store.Tx) error {
		if err := tx.FinishFleetRun(d.ctx, d.id, state, halted, now); err != nil {
			return err
		}
		_, err := tx.AppendFleetRunEvent(d.ctx, ev)
		return err
	})
	if err != nil {
		return fmt.Errorf("finish run: %w", err)
	}
	d.e.notify(d.id)
	d.log.Info("fleet run finished", "state", state, "succeeded", counts.Succeeded, "failed", counts.Failed,
		"skipped", counts.Skipped, "not_started", counts.NotStarted, "halted", halted)
	return nil
}

// keepLease renews the lease every third of its duration and picks up a cancel
// requested through another replica. A lost lease stops the driver: another
// replica drives the run now.
func (d *driver) keepLease(done <-chan struct{}) {
	every := d.e.cfg.LeaseDuration / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		now := d.e.cfg.Now().UTC()
		err := d.e.cfg.Store.AcquireFleetRunLease(d.ctx, d.id, d.e.cfg.ReplicaID, now, now.Add(d.e.cfg.LeaseDuration))
		switch {
		case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
			select {
			case <-done: // the run just finished, which also ends the lease
			default:
				d.log.Warn("fleet run lease lost; another replica drives it now")
				d.stop()
			}
			return
		case err != nil:
			d.log.Warn("renew fleet run lease", "err", err)
			continue
		}
		if rec, err := d.e.cfg.Store.GetFleetRun(d.ctx, d.id); err == nil && !rec.CancelRequestedAt.IsZero() {
			d.cancelRequested()
		}
	}
}

// append queues an event behind everything queued before it; it is numbered and
// committed with the next batch.
func (d *driver) append(payload any) error {
	ev, err := encodeEvent(d.id, d.e.cfg.Now().UTC(), payload)
	if err != nil {
		return err
	}
	d.writes.event(ev)
	return nil
}

// finishHost records h's outcome and its host_result event together, in the next
// batch; it does not wait for the commit (a result lost with this replica is found
// again by the next driver: the host is still running in the store).
func (d *driver) finishHost(h store.FleetRunHost, from string) {
	if h.State == store.FleetHostFailed {
		d.mu.Lock()
		d.failures++
		d.mu.Unlock()
	}
	d.writes.result(h, from)
}

func resultLabel(state string) string {
	switch state {
	case store.FleetHostSucceeded:
		return "succeeded"
	case store.FleetHostFailed:
		return "failed"
	case store.FleetHostSkipped:
		return "skipped"
	}
	return "not_started"
}

// host takes one host from pending (or running, at a resume) to its outcome. If
// the driver stops first, the host is left as it is for the next driver.
func (d *driver) host(h store.FleetRunHost) {
	from := h.State
	out, ok := d.act(&h)
	if !ok {
		return
	}
	if h.State == store.FleetHostRunning {
		from = store.FleetHostRunning
	}
	out.FinishedAt = d.e.cfg.Now().UTC()
	d.finishHost(out, from)
}

func ended(h store.FleetRunHost, state, reason, msg string) store.FleetRunHost {
	h.State, h.Reason, h.Message = state, reason, msg
	return h
}

// act starts h if it is pending (h is updated to running) and runs its action;
// ok is false when the driver stopped before an outcome.
func (d *driver) act(h *store.FleetRunHost) (out store.FleetRunHost, ok bool) {
	st := d.e.cfg.Store
	// A host skipped before it starts has no start time.
	slotAt := h.StartedAt
	if h.State == store.FleetHostPending {
		h.StartedAt = time.Time{}
	}
	dm, err := st.GetDaemon(d.ctx, h.NodeID)
	switch {
	case d.ctx.Err() != nil:
		return out, false
	case errors.Is(err, store.ErrNotFound):
		return ended(*h, store.FleetHostSkipped, "removed", "skipped: the host is no longer enrolled"), true
	case err != nil:
		return ended(*h, store.FleetHostFailed, "internal", "the control plane could not read the host's record: "+err.Error()), true
	}
	resumedRunning := h.State == store.FleetHostRunning
	if !resumedRunning {
		if dm.Status == store.DaemonRevoked {
			return ended(*h, store.FleetHostSkipped, "revoked", "skipped: the host is revoked; enroll it again to include it"), true
		}
		if !d.waitStream(h.NodeID) {
			if d.ctx.Err() != nil {
				return out, false
			}
			return ended(*h, store.FleetHostSkipped, "disconnected", "skipped: the host had no live stream when its wave started; nothing was sent to it"), true
		}
		creds, known, _ := d.e.cfg.Presence.Current(h.NodeID)
		if !known {
			creds.KeyFingerprint = fingerprint.Of(dm.PublicKey)
		}
		// The start time is when the host got its slot (drive), so start times follow
		// the plan's order.
		h.State, h.StartedAt = store.FleetHostRunning, slotAt
		h.StartKeyFingerprint, h.StartTokenJTI = creds.KeyFingerprint, creds.TokenJTI
		// Durable before the command is sent: a driver that resumes the run must
		// know the host was asked, or it would ask again (a second rotation, a
		// command run twice). The hosts starting together share one commit.
		if err := d.writes.start(*h)(); err != nil {
			if d.ctx.Err() != nil {
				return out, false
			}
			d.log.Error("fleet host not started", "node", h.NodeID, "err", err)
			return out, false
		}
	}
	// A host resumed in flight gets a whole deadline from now: the restart ate
	// part of the first one through no fault of the host.
	ctx, cancel := context.WithTimeout(d.ctx, d.spec.Deadline)
	defer cancel()
	switch d.spec.Action {
	case ActionKeysRotate:
		return d.rotate(ctx, *h, dm, resumedRunning)
	case ActionTokenRefresh:
		return d.refresh(ctx, *h)
	case ActionCmdRun:
		if resumedRunning {
			// The pending call died with the replica that sent it; running the
			// command again could run it twice.
			return ended(*h, store.FleetHostFailed, "interrupted",
				"the control plane restarted while the command ran, so its result is unknown; check the host before running it again"), true
		}
		return d.cmdRun(ctx, *h)
	}
	return ended(*h, store.FleetHostFailed, "internal", "unknown action "+string(d.spec.Action)), true
}

// waitStream reports whether the host has a live stream here. A resumed driver
// gives hosts until resumeUntil to reconnect after the restart.
func (d *driver) waitStream(nodeID string) bool {
	for {
		if _, ok := d.e.cfg.Sessions.Get(nodeID); ok {
			return true
		}
		if !time.Now().Before(d.resumeUntil) {
			return false
		}
		select {
		case <-d.ctx.Done():
			return false
		case <-time.After(retryEvery):
		}
	}
}

// send queues c for the host's stream, retrying while the stream's queue is full
// or the host is between streams, until ctx ends.
func (d *driver) send(ctx context.Context, nodeID string, c session.Command) error {
	for {
		err := d.e.cfg.Sessions.Send(nodeID, c)
		if err == nil || (!errors.Is(err, session.ErrBusy) && !errors.Is(err, session.ErrNoStream)) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retryEvery):
		}
	}
}

// timedOut turns a missed deadline into the host's failure: "disconnected" if the
// host has no stream now (it went away and did not come back), else "deadline".
func (d *driver) timedOut(h store.FleetRunHost, deadlineMsg, goneMsg string) (store.FleetRunHost, bool) {
	if d.ctx.Err() != nil {
		return store.FleetRunHost{}, false
	}
	if _, live := d.e.cfg.Sessions.Get(h.NodeID); !live {
		return ended(h, store.FleetHostFailed, "disconnected", goneMsg), true
	}
	return ended(h, store.FleetHostFailed, "deadline", deadlineMsg), true
}

// rotate sends RotateKeyCommand and waits until the host's stream presents an
// envelope signed by a key other than the one it had at the start, carrying a
// token other than the one it had: the daemon heartbeats right after its swap.
// At a resume, a host whose key already changed is not asked again; it presents
// the new key when it reconnects.
func (d *driver) rotate(ctx context.Context, h store.FleetRunHost, dm store.Daemon, resumed bool) (store.FleetRunHost, bool) {
	rotated := func(c session.Credentials) bool {
		return c.KeyFingerprint != h.StartKeyFingerprint && c.TokenJTI != h.StartTokenJTI
	}
	send := true
	if resumed {
		// Let the host reconnect first: it finishes a rotation it had begun and
		// comes back under whichever key it committed, which may already be the
		// new one. Only a host whose key is still the old one is asked again.
		d.waitStream(h.NodeID)
		if c, known, _ := d.e.cfg.Presence.Current(h.NodeID); known && rotated(c) {
			return ended(h, store.FleetHostSucceeded, "", msgRotated), true
		}
		if cur, err := d.e.cfg.Store.GetDaemon(ctx, h.NodeID); err == nil {
			dm = cur
		}
		send = fingerprint.Of(dm.PublicKey) == h.StartKeyFingerprint
	}
	var err error
	if send {
		err = d.send(ctx, h.NodeID, session.Command{Kind: session.CommandRotateKey, FleetRunID: d.id, KeepOld: d.spec.KeepOld})
	}
	if err == nil {
		err = d.e.cfg.Presence.Wait(ctx, h.NodeID, rotated)
	}
	if err == nil {
		return ended(h, store.FleetHostSucceeded, "", msgRotated), true
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return ended(h, store.FleetHostFailed, "internal", "the rotation command could not be sent: "+err.Error()), true
	}
	dl := d.spec.Deadline
	return d.timedOut(h,
		fmt.Sprintf("no envelope under a new key within %s; the host keeps its old key and heals itself — check `aegis edge status` on it and re-run `aegis edge keys rotate`", dl),
		fmt.Sprintf("the host's stream went away and did not come back within %s; it keeps whichever key it committed and heals itself when it reconnects — check `aegis edge status` on it and re-run `aegis edge keys rotate` if it still shows the old key", dl))
}

// refresh sends RefreshTokenCommand and waits until the stream presents a token
// other than the one it had at the start.
func (d *driver) refresh(ctx context.Context, h store.FleetRunHost) (store.FleetRunHost, bool) {
	refreshed := func(c session.Credentials) bool { return c.TokenJTI != "" && c.TokenJTI != h.StartTokenJTI }
	var err error
	if creds, known, _ := d.e.cfg.Presence.Current(h.NodeID); !known || !refreshed(creds) {
		err = d.send(ctx, h.NodeID, session.Command{Kind: session.CommandRefreshToken, Reason: "fleet run " + d.id})
	}
	if err == nil {
		err = d.e.cfg.Presence.Wait(ctx, h.NodeID, refreshed)
	}
	if err == nil {
		return ended(h, store.FleetHostSucceeded, "", msgRefreshed), true
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return ended(h, store.FleetHostFailed, "internal", "the refresh command could not be sent: "+err.Error()), true
	}
	dl := d.spec.Deadline
	return d.timedOut(h,
		fmt.Sprintf("no envelope under a new token within %s; the host keeps its current token and refreshes on its own schedule — check `aegis edge status` on it", dl),
		fmt.Sprintf("the host's stream went away and did not come back within %s; it attests again when it reconnects — check `aegis edge status` on it", dl))
}

// cmdRun invokes the command through the tool-call service, as the run's creator
// (audited as that operator). Output is not kept in the run.
func (d *driver) cmdRun(ctx context.Context, h store.FleetRunHost) (store.FleetRunHost, bool) {
	// The hosts were resolved under the creator's scope when the run started; the
	// call must not be refused later because it runs outside that request.
	p := apitoken.Principal{TokenID: d.rec.CreatedBy, TenantID: d.rec.TenantID, Role: store.RoleAdmin}
	c := d.spec.CmdRun
	var call *toolcall.Call
	for {
		var err error
		call, err = d.e.cfg.ToolCalls.Start(d.ctx, p, toolcall.Request{NodeID: h.NodeID, Command: c.Command, Args: c.Args, Cwd: c.Cwd, Deadline: d.spec.Deadline})
		if err == nil {
			break
		}
		if !errors.Is(err, toolcall.ErrBusy) {
			if d.ctx.Err() != nil {
				return store.FleetRunHost{}, false
			}
			return ended(h, store.FleetHostFailed, "internal", "the command could not be sent: "+err.Error()), true
		}
		select {
		case <-ctx.Done():
			return d.timedOut(h, "the host's command queue stayed full until the deadline; run it again later",
				"the host's stream went away before the command could be sent")
		case <-time.After(retryEvery):
		}
	}
	for {
		// Not bounded by ctx: the call ends itself at its deadline (plus a grace
		// for a reconnecting daemon), and its result is what the host did.
		ev, err := call.Next(d.ctx)
		if err != nil {
			return store.FleetRunHost{}, false
		}
		if ev.Result == nil {
			continue
		}
		r := *ev.Result
		h.ExitCode = r.ExitCode
		switch {
		case r.Kind == toolcall.KindNone && r.OK:
			return ended(h, store.FleetHostSucceeded, "", fmt.Sprintf("succeeded (exit %d)", r.ExitCode)), true
		case r.Kind == toolcall.KindNone:
			return ended(h, store.FleetHostFailed, "exit_code", fmt.Sprintf("failed (exit %d)", r.ExitCode)), true
		case r.Kind == toolcall.KindEdgeDisconnected:
			return ended(h, store.FleetHostFailed, "disconnected", r.Message), true
		default:
			msg := r.Message
			if msg == "" {
				msg = "the command did not complete: " + r.Kind.String()
			}
			return ended(h, store.FleetHostFailed, r.Kind.String(), msg), true
		}
	}
}
