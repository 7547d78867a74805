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

// enrollStats is what enrolling cost.
type enrollStats struct {
	// Throttled counts enrollments refused by a rate limit and tried again.
	Throttled int64
	// TokenSeconds is how long making the enrollment tokens took (an operator's
	// preparation); EnrollSeconds how long the hosts' enrollments took.
	TokenSeconds, EnrollSeconds float64
}

// enrollHosts enrolls n hosts tagged tag into base/<prefix>-NNNNN, concurrency at a
// time, reporting progress: first every enrollment token (the operator's side), then
// every host's enrollment (the hosts' side, timed on its own). Every host comes from
// this machine, one source to the control plane's per-source challenge limit: a
// refused challenge spends nothing, so it waits as told and tries again, and the
// count of such waits is returned.
// between, when set, runs after the tokens are made and before the hosts enroll.
func enrollHosts(ctx context.Context, cp *controlPlane, base string, n, concurrency int, tag string, p *progress, between func()) ([]*host, enrollStats, error) {
	var st enrollStats
	hosts := make([]*host, n)
	tokens := make([]string, n)
	admin := cp.Admin()
	for i := range hosts {
		name := fmt.Sprintf("%s-%05d", tag, i)
		hosts[i] = &host{Name: name, Dir: keystore.Open(filepath.Join(base, name))}
	}
	start := time.Now()
	err := forEach(ctx, n, 16, p, "enrollment tokens made", nil, func(i int) error {
		resp, err := admin.CreateEnrollmentToken(ctx, connect.NewRequest(&edgev1.CreateEnrollmentTokenRequest{
			Tags: []string{tag}, Ttl: durationpb.New(time.Hour), Name: hosts[i].Name,
		}))
		if err != nil {
			return fmt.Errorf("enrollment token for %s: %w", hosts[i].Name, err)
		}
		tokens[i] = resp.Msg.GetToken()
		return nil
	})
	if err != nil {
		return nil, st, err
	}
	st.TokenSeconds = time.Since(start).Seconds()
	if between != nil {
		between()
	}
	var throttled atomic.Int64
	start = time.Now()
	err = forEach(ctx, n, concurrency, p, "hosts enrolled", func() string {
		return fmt.Sprintf(" (%d waits on a rate limit)", throttled.Load())
	}, func(i int) error {
		return enrollOne(ctx, hosts[i], tokens[i], &throttled)
	})
	st.EnrollSeconds = time.Since(start).Seconds()
	st.Throttled = throttled.Load()
	if err != nil {
		return nil, st, err
	}
	return hosts, st, nil
}

// forEach runs do(0..n-1), concurrency at a time, printing "K of N what" each
// second. The first failure stops it: it is returned with how many others failed.
func forEach(ctx context.Context, n, concurrency int, p *progress, what string, extra func() string, do func(i int) error) error {
	var done, failed atomic.Int64
	var first atomic.Pointer[error]
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	stop := p.every(time.Second, func() string {
		line := fmt.Sprintf("%d of %d %s", done.Load(), n, what)
		if extra != nil {
			line += extra()
		}
		return line
	})
	defer stop()
	for i := range n {
		if ctx.Err() != nil || first.Load() != nil {
			break
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := do(i); err != nil {
				failed.Add(1)
				first.CompareAndSwap(nil, &err)
			}
			done.Add(1)
		}()
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		if k := failed.Load(); k > 1 {
			return fmt.Errorf("%w (and %d more failed)", *e, k-1)
		}
		return *e
	}
	return ctx.Err()
}

func enrollOne(ctx context.Context, h *host, token string, throttled *atomic.Int64) error {
	if err := os.Mkdir(h.Dir.Path(), keystore.DirMode); err != nil {
		return fmt.Errorf("state dir for %s: %w", h.Name, err)
	}
	for {
		res, err := enroll.Enroll(ctx, enroll.Options{Token: token, StateDir: h.Dir.Path(), Name: h.Name, Timeout: 30 * time.Second})
		if wait, limited := rateLimited(err); limited {
			throttled.Add(1)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
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

// rateLimited says whether err is a rate limit's refusal, and how long to wait.
func rateLimited(err error) (time.Duration, bool) {
	if !errors.Is(err, enroll.ErrRejected) || !strings.Contains(err.Error(), "rate limited") {
		return 0, false
	}
	return 100 * time.Millisecond, true
}
