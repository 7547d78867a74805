package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/keyage"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
)

// Routine rotation on cadence (DESIGN.md §10). The daemon rotates its own key before
// it grows older than its effective maximum: the smaller of rotation.max_key_age and
// the policy maximum the control plane gives in Welcome and RotationPolicyCommand.
// It picks one random moment per key in the window before the due time, so hosts
// enrolled together do not rotate together, and rotates with RotateKeys (the same
// crash-safe protocol as `aegis edge keys rotate`: the stream stays up, running
// tool calls are not touched). A failed attempt is retried with backoff; the old key
// keeps working meanwhile.

// lateSpread bounds how long after start (or a policy change) a daemon whose key is
// already due waits, so a fleet restarted together does not rotate in one instant.
const lateSpread = 30 * time.Second

// cadencePlan is when the current key falls due and when the daemon will rotate it.
type cadencePlan struct {
	Max   time.Duration // 0: no routine rotation
	Since time.Time
	Due   time.Time
	At    time.Time
}

// planRotation places the rotation of a key made at since under max: at
// due - window + draw*window, or (when that moment has passed, e.g. the daemon was
// off) draw of the way to the due time, or, once due, within lateSpread of now.
// draw is uniform in [0,1) and fixed per key.
func planRotation(since time.Time, max time.Duration, now time.Time, draw float64) cadencePlan {
	if max <= 0 || since.IsZero() {
		return cadencePlan{}
	}
	p := cadencePlan{Max: max, Since: since, Due: since.Add(max)}
	w := keyage.Window(max)
	p.At = p.Due.Add(-w).Add(time.Duration(draw * float64(w)))
	switch {
	case !p.At.Before(now):
	case now.Before(p.Due):
		p.At = now.Add(time.Duration(draw * float64(p.Due.Sub(now))))
	default:
		p.At = now.Add(time.Duration(draw * float64(min(w, lateSpread))))
	}
	return p
}

// cadence is the scheduler: one per agent, alive as long as Run.
type cadence struct {
	now     func() time.Time
	after   func(time.Duration) <-chan time.Time
	jitter  func() float64
	backoff func(n int) time.Duration
	log     *slog.Logger
	local   time.Duration
	// since reads when the current key was made (zero: no identity).
	since func() time.Time
	// key is the fingerprint of the key in use; read before since, so a key that
	// changes between the two reads is seen as changed, never as the same.
	key func() string
	// rotate runs one routine rotation of key, only while key is still in use
	// (rotation.ErrKeyChanged otherwise).
	rotate func(ctx context.Context, key string) error
	// publish shows the plan and the last failure ("" after a success).
	publish func(p cadencePlan, lastErr string)

	mu     sync.Mutex
	policy time.Duration
	draw   float64
	drawn  time.Time // the key since the draw was made for
	wake   chan struct{}
}

func (c *cadence) init() { c.wake = make(chan struct{}, 1) }

func (c *cadence) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// setPolicy records the control plane's maximum for this host (0: none).
func (c *cadence) setPolicy(max time.Duration) {
	c.mu.Lock()
	changed := c.policy != max
	c.policy = max
	c.mu.Unlock()
	if changed {
		c.log.Info("rotation policy from the control plane", "policy_max_key_age", keyage.Format(max), "local_max_key_age", keyage.Format(c.local))
	}
	// Replan even when unchanged: a Welcome also follows an enrollment or a restored
	// identity, whose key the scheduler has not seen yet.
	c.poke()
}

// plan is the current plan; a new key gets a new draw.
func (c *cadence) plan() cadencePlan {
	since := c.since()
	c.mu.Lock()
	if !since.Equal(c.drawn) {
		c.drawn, c.draw = since, c.jitter()
	}
	max, draw := keyage.Effective(c.local, c.policy), c.draw
	c.mu.Unlock()
	return planRotation(since, max, c.now(), draw)
}

func (c *cadence) run(ctx context.Context) {
	failures := 0
	lastErr := ""
	var failedFor time.Time // the key the failures were counted for
	for {
		key := c.key()
		p := c.plan()
		if !p.Since.Equal(failedFor) {
			failures, lastErr = 0, ""
		}
		c.publish(p, lastErr)
		var wait <-chan time.Time
		if p.Max > 0 {
			d := p.At.Sub(c.now())
			if failures > 0 {
				// Retry on the backoff: the key is due (or nearly), and the plan's
				// moment has passed.
				d = c.backoff(failures)
			}
			wait = c.after(max(d, 0))
		}
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
			continue
		case <-wait:
		}
		if !c.since().Equal(p.Since) {
			// The key changed while we waited (a reconnect finished a pending
			// rotation, or `keys rotate` ran): plan for the new key instead of
			// rotating it at once.
			continue
		}
		c.log.Info("routine key rotation: the key is due", "key_age", keyage.Human(c.now().Sub(p.Since)), "max_key_age", keyage.Format(p.Max), "due", p.Due.UTC())
		err := c.rotate(ctx, key)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rotation.ErrKeyChanged) {
			// Another rotation replaced the key while this one waited for the state
			// dir's lock: the due key is gone, plan for the new one.
			c.log.Info("routine key rotation: the key was replaced meanwhile; planning for the new key")
			continue
		}
		if err != nil {
			failures++
			failedFor = p.Since
			lastErr = errMessage(err)
			c.log.Warn("routine key rotation failed; the current key stays in use, will retry", "error", lastErr, "attempt", failures, "overdue", !c.now().Before(p.Due))
			continue
		}
		if c.since().Equal(p.Since) {
			// Rotated, but the key file says otherwise (a clock or file system
			// oddity): wait a backoff rather than rotate again at once.
			failures++
			failedFor = p.Since
		}
	}
}

// keySince is when node.key was written: enrollment or the last rotation's first
// step (a rename keeps the time). Zero when there is no key.
func keySince(dir *keystore.Dir) time.Time {
	fi, err := os.Stat(dir.File(keystore.KeyFile))
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// newCadence wires the scheduler to the agent.
func (a *Agent) newCadence() *cadence {
	c := &cadence{
		now:     a.cfg.Now,
		after:   time.After,
		jitter:  a.cfg.Jitter,
		backoff: a.backoff,
		log:     a.log,
		local:   a.cfg.MaxKeyAge,
		since:   func() time.Time { return keySince(a.cfg.Dir) },
		key:     func() string { return a.Status().KeyFingerprint },
		rotate: func(ctx context.Context, key string) error {
			_, err := a.RotateKeys(ctx, rotation.RotateOptions{KeepOld: a.cfg.KeepOld, IfKey: key})
			return err
		},
		publish: func(p cadencePlan, lastErr string) {
			a.update(func(s *Snapshot) {
				s.MaxKeyAge, s.KeySince, s.KeyDueAt, s.NextRotationAt, s.RotationError = p.Max, p.Since, p.Due, p.At, lastErr
			})
		},
	}
	c.init()
	return c
}

// welcomePolicy is the stream's hook: a Welcome names the policy maximum (unset:
// no policy selects this host).
func (a *Agent) welcomePolicy(w *edgev1.Welcome) {
	if a.cadence != nil {
		a.cadence.setPolicy(w.GetMaxKeyAge().AsDuration())
	}
}

// policyCommand: the control plane changed this host's policy maximum.
func (a *Agent) policyCommand(c *edgev1.RotationPolicyCommand) {
	if a.cadence != nil {
		a.cadence.setPolicy(c.GetMaxKeyAge().AsDuration())
	}
}
