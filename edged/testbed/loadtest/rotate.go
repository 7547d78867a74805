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

// rotateLevel rotates for d with concurrency workers; a host is in at most one
// worker's hands at a time (each rotation replaces its key).
func rotateLevel(ctx context.Context, client edgev1connect.NodeClusterServiceClient, pool chan *rotator, concurrency int, d time.Duration) (RotateLevel, error) {
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
	el := time.Since(start)
	slices.Sort(lat)
	lv := RotateLevel{
		Concurrency: concurrency, Rotations: int(n.Load()), Errors: int(errs.Load()),
		Seconds: el.Seconds(), PerSecond: float64(n.Load()) / el.Seconds(),
		P50Ms: pct(lat, 0.50), P99Ms: pct(lat, 0.99),
	}
	if lv.Errors > 0 && lv.Rotations == 0 {
		return lv, firstErr.Load().(error)
	}
	return lv, nil
}

func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return float64(sorted[i]) / float64(time.Millisecond)
}
