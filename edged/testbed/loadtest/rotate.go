package loadtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/api/seal"
)

// rotator is one host's identity held in memory, so that the rotate scenario
// measures the control plane's RotateEdgeKey (both signatures, the transaction) and
// not the host's disk.
type rotator struct {
	nodeID string
	key    ed25519.PrivateKey
	token  string
}

// rotateOnce sends one RotateEdgeKey for r as the daemon's rotation does (new key's
// proof of possession inside, old key's authority outside) and adopts the result.
func (r *rotator) rotateOnce(ctx context.Context, client edgev1connect.NodeClusterServiceClient) error {
	newPub, newKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	var rid [16]byte
	_, _ = rand.Read(rid[:])
	rotationID := hex.EncodeToString(rid[:])
	now := time.Now()
	oldPub := r.key.Public().(ed25519.PublicKey)
	payload := &edgev1.RotateEdgeKeyRequest{
		RotationId:      rotationID,
		NodeId:          r.nodeID,
		NewPublicKey:    newPub,
		TimestampUnixMs: now.UnixMilli(),
		NewKeySignature: ed25519.Sign(newKey, seal.RotateNewKeyMessage(rotationID, r.nodeID, oldPub, newPub, time.UnixMilli(now.UnixMilli()))),
	}
	var sid [8]byte
	_, _ = rand.Read(sid[:])
	env, err := seal.Seal(r.key, seal.Header{
		Kind: edgev1.EnvelopeKind_ENVELOPE_KIND_ROTATE_KEY, Token: r.token, NodeID: r.nodeID,
		StreamID: hex.EncodeToString(sid[:]), Sequence: 1, Time: now,
	}, payload)
	if err != nil {
		return err
	}
	resp, err := client.RotateEdgeKey(ctx, connect.NewRequest(env))
	if err != nil {
		return err
	}
	r.key, r.token = newKey, resp.Msg.GetNodeSecurityToken()
	return nil
}

// rotateSlice is what one stretch of rotations did.
type rotateSlice struct {
	rotations, errors int
	seconds           float64
	latencies         []time.Duration
	firstErr          error
}

// rotateFor rotates for d with concurrency workers; a host is in at most one
// worker's hands at a time (each rotation replaces its key).
func rotateFor(ctx context.Context, client edgev1connect.NodeClusterServiceClient, pool chan *rotator, concurrency int, d time.Duration) rotateSlice {
	var n, errs atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr atomic.Value
	stop := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(stop) && ctx.Err() == nil {
				r := <-pool
				t0 := time.Now()
				err := r.rotateOnce(ctx, client)
				pool <- r
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", r.nodeID, err))
					continue
				}
				mine = append(mine, time.Since(t0))
				n.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sl := rotateSlice{rotations: int(n.Load()), errors: int(errs.Load()), seconds: time.Since(start).Seconds(), latencies: lat}
	sl.firstErr, _ = firstErr.Load().(error)
	return sl
}

// rotateLevel measures one concurrency level in rounds: each round rotates for
// d/rounds, then runs the reference transaction at the same concurrency for half
// that. A shared machine's speed drifts over seconds; taking both figures in
// alternation lets the ratio compare what the same minutes allowed, where one
// reference run after the whole level would catch another moment. The level's rate
// is every rotation over the time spent rotating, its reference the mean of the
// equally long reference slices, and the ratio theirs; each round's own ratio gives
// the spread.
func rotateLevel(ctx context.Context, client edgev1connect.NodeClusterServiceClient, pool chan *rotator, ref txReference, concurrency, rounds int, d time.Duration) (RotateLevel, error) {
	slice := d / time.Duration(rounds)
	lv := RotateLevel{Concurrency: concurrency, Rounds: rounds}
	var lat []time.Duration
	var firstErr error
	var refSum float64
	for i := range rounds {
		sl := rotateFor(ctx, client, pool, concurrency, slice)
		lv.Rotations += sl.rotations
		lv.Errors += sl.errors
		lv.Seconds += sl.seconds
		lat = append(lat, sl.latencies...)
		if firstErr == nil {
			firstErr = sl.firstErr
		}
		refRate, err := ref.Run(ctx, concurrency, slice/2)
		if err != nil {
			return lv, err
		}
		refSum += refRate
		r := ratio(float64(sl.rotations)/sl.seconds, refRate)
		if i == 0 || r < lv.RatioMin {
			lv.RatioMin = r
		}
		lv.RatioMax = max(lv.RatioMax, r)
	}
	if lv.Errors > 0 && lv.Rotations == 0 {
		return lv, firstErr
	}
	slices.Sort(lat)
	lv.PerSecond = float64(lv.Rotations) / lv.Seconds
	lv.P50Ms, lv.P99Ms = pct(lat, 0.50), pct(lat, 0.99)
	lv.ReferencePerSecond = refSum / float64(rounds)
	lv.ReferenceRatio = ratio(lv.PerSecond, lv.ReferencePerSecond)
	return lv, nil
}

func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return float64(sorted[i]) / float64(time.Millisecond)
}
