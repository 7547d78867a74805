package loadtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/enroll"
	"github.com/aegis-edge/aegis/edged/keystore"
	"google.golang.org/protobuf/types/known/durationpb"
)

// host is one enrolled host: a real state directory made by the real enroll flow.
type host struct {
	Name   string
	NodeID string
	Dir    *keystore.Dir
}

// enrollHosts enrolls n hosts tagged tag into base/<name>, concurrency at a time,
// reporting progress. Every host comes from 127.0.0.1, one source to the control
// plane's per-source challenge limit: a refused challenge spends nothing, so it waits
// and tries again, and the count of such waits is returned.
func enrollHosts(ctx context.Context, cp *controlPlane, base string, n, concurrency int, tag string, p *progress) ([]*host, int64, error) {
	hosts := make([]*host, n)
	var throttled, done atomic.Int64
	errs := make([]error, n)
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	admin := cp.Admin()
	stopTicker := p.every(time.Second, func() string {
		return fmt.Sprintf("enrolling: %d of %d hosts (%d waits on the challenge rate limit)", done.Load(), n, throttled.Load())
	})
	for i := range hosts {
		name := fmt.Sprintf("load-%05d", i)
		h := &host{Name: name, Dir: keystore.Open(filepath.Join(base, name))}
		hosts[i] = h
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = enrollOne(ctx, admin, h, tag, &throttled)
			done.Add(1)
		}()
		if ctx.Err() != nil {
			break
		}
	}
	wg.Wait()
	stopTicker()
	if err := errors.Join(errs...); err != nil {
		return nil, throttled.Load(), err
	}
	return hosts, throttled.Load(), nil
}

func enrollOne(ctx context.Context, admin interface {
	CreateEnrollmentToken(context.Context, *connect.Request[edgev1.CreateEnrollmentTokenRequest]) (*connect.Response[edgev1.CreateEnrollmentTokenResponse], error)
}, h *host, tag string, throttled *atomic.Int64) error {
	resp, err := admin.CreateEnrollmentToken(ctx, connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{
		Tags: []string{tag}, Ttl: durationpb.New(time.Hour), Name: h.Name,
	}))
	if err != nil {
		return fmt.Errorf("enrollment token for %s: %w", h.Name, err)
	}
	if err := os.Mkdir(h.Dir.Path(), keystore.DirMode); err != nil {
		return fmt.Errorf("state dir for %s: %w", h.Name, err)
	}
	for {
		res, err := enroll.Enroll(ctx, enroll.Options{Token: resp.Msg.GetToken(), StateDir: h.Dir.Path(), Name: h.Name, Timeout: 30 * time.Second})
		if errors.Is(err, enroll.ErrRejected) && strings.Contains(err.Error(), "rate limited") {
			throttled.Add(1)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("enroll %s: %w", h.Name, err)
		}
		h.NodeID = res.NodeID
		return nil
	}
}
