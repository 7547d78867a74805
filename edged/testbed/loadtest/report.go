package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// progress prints what a long run is doing, on stderr, so stdout stays the summary.
type progress struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *progress) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// every prints line() each interval until the returned stop is called.
func (p *progress) every(interval time.Duration, line func() string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.say("%s", line())
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// Summary is the last line of `-o json`: one object per run. The fields every
// scenario fills come first; the rest are the scenario's own.
type Summary struct {
	Scenario string  `json:"scenario"`
	Database string  `json:"database"`
	Hosts    int     `json:"hosts"`
	Seconds  float64 `json:"seconds"`
	// PerSecond is the scenario's rate: rotations/s (rotate, at the best level),
	// hosts/s (fleet), heartbeats/s (connect), daemons reconnected/s (storm),
	// enrollments/s (enroll).
	PerSecond float64 `json:"per_second"`
	// Reference names what was measured beside it in the same run, and its rate.
	Reference          string  `json:"reference"`
	ReferencePerSecond float64 `json:"reference_per_second"`
	ReferenceRatio     float64 `json:"reference_ratio"`

	// rotate
	Concurrency int           `json:"concurrency,omitempty"`
	Levels      []RotateLevel `json:"levels,omitempty"`
	// fleet
	Batch int `json:"batch,omitempty"`
	// HostP50Ms and HostP99Ms: how long one host took, from its start to its result.
	HostP50Ms float64      `json:"host_p50_ms,omitempty"`
	HostP99Ms float64      `json:"host_p99_ms,omitempty"`
	Waves     int          `json:"waves,omitempty"`
	Results   *FleetCounts `json:"results,omitempty"`
	// LostResults and DuplicateResults count hosts with no result event, and result
	// events beyond one per host: both must be 0.
	LostResults      int `json:"lost_results"`
	DuplicateResults int `json:"duplicate_results"`
	// Errors counts failed calls (rotate) or hosts not verified on a new key (fleet).
	Errors int `json:"errors"`
	// connect: the control plane's cost per connected daemon (RSS and heap above
	// what it used before the daemons started), heartbeats validated per second and
	// the server's CPU per heartbeat (also in Ed25519 verifies), revocation latency
	// (the RevokeHost call → the daemon's stream closed as revoked).
	KiBPerDaemon          *float64 `json:"kib_per_daemon,omitempty"`
	HeapKiBPerDaemon      *float64 `json:"heap_kib_per_daemon,omitempty"`
	StackKiBPerDaemon     *float64 `json:"stack_kib_per_daemon,omitempty"`
	GoroutinesPerDaemon   *float64 `json:"goroutines_per_daemon,omitempty"`
	HeartbeatsPerSecond   *float64 `json:"heartbeats_per_second,omitempty"`
	CPUMicrosPerHeartbeat *float64 `json:"cpu_us_per_heartbeat,omitempty"`
	// VerifiesPerHeartbeat is cpu_us_per_heartbeat in Ed25519 verifies of
	// verify_cpu_us: the reference measured in the same window and unit (thread CPU
	// time, the median of short slices spread over the steady window).
	VerifiesPerHeartbeat *float64 `json:"cpu_per_heartbeat_in_verifies,omitempty"`
	VerifyCPUMicros      *float64 `json:"verify_cpu_us,omitempty"`
	VerifyCPUSlices      int      `json:"verify_cpu_slices,omitempty"`
	// VerifyWallPerSecond is the older reference, kept beside it: verifies a second
	// by the wall clock, for 1s on one core before the daemons start (an idle box);
	// WallVerifiesPerHeartbeat is cpu_us_per_heartbeat in those verifies.
	VerifyWallPerSecond      *float64 `json:"verify_wall_per_second,omitempty"`
	WallVerifiesPerHeartbeat *float64 `json:"cpu_per_heartbeat_in_wall_verifies,omitempty"`
	RSSBaseMiB               *float64 `json:"rss_base_mib,omitempty"`
	RSSMiB                   *float64 `json:"rss_mib,omitempty"`
	Revoked                  int      `json:"revoked,omitempty"`
	RevocationP50Ms          *float64 `json:"revocation_p50_ms,omitempty"`
	RevocationP99Ms          *float64 `json:"revocation_p99_ms,omitempty"`
	// storm: from the restarted control plane being ready to every daemon Connected
	// again on a new stream; what each daemon sent meanwhile (stream attempts,
	// including refused and failed ones; attestations; challenges) and how many
	// streams it was welcomed on; the peak RSS against the steady state before.
	RestartSeconds *float64 `json:"restart_seconds,omitempty"`
	// StopSeconds and StartSeconds split a restart the tool made: SIGTERM to the
	// old process's exit (its drain), then the new process's start to ready.
	StopSeconds       *float64 `json:"stop_seconds,omitempty"`
	StartSeconds      *float64 `json:"start_seconds,omitempty"`
	ReconnectSeconds  *float64 `json:"reconnect_seconds,omitempty"`
	AttemptsPerDaemon *float64 `json:"attempts_per_daemon,omitempty"`
	// UnreachablePerDaemon: of those attempts, the ones whose dial failed (the
	// control plane was not listening yet), which it never saw.
	UnreachablePerDaemon *float64 `json:"unreachable_attempts_per_daemon,omitempty"`
	StreamsPerDaemon     *float64 `json:"streams_per_daemon,omitempty"`
	AttestsPerDaemon     *float64 `json:"attests_per_daemon,omitempty"`
	ChallengesPerDaemon  *float64 `json:"challenges_per_daemon,omitempty"`
	PeakRSSMiB           *float64 `json:"peak_rss_mib,omitempty"`
	PeakRSSRatio         *float64 `json:"peak_rss_ratio,omitempty"`
	// enroll: hosts enrolled per second from one source (the tokens are made first,
	// and timed apart in token_seconds), and refusals by a rate limit.
	EnrollmentsPerSecond *float64 `json:"enrollments_per_second,omitempty"`
	TokenSeconds         *float64 `json:"token_seconds,omitempty"`
	Throttled            *float64 `json:"throttled,omitempty"`
	// Setup is how long enrolling and connecting took (not part of Seconds).
	SetupSeconds float64 `json:"setup_seconds"`
	// ServerCPUSeconds is the control plane process's CPU time during the measured part.
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
}

// RotateLevel is one concurrency level of the rotate scenario.
type RotateLevel struct {
	Concurrency        int     `json:"concurrency"`
	Rotations          int     `json:"rotations"`
	Errors             int     `json:"errors"`
	Seconds            float64 `json:"seconds"`
	PerSecond          float64 `json:"per_second"`
	P50Ms              float64 `json:"p50_ms"`
	P99Ms              float64 `json:"p99_ms"`
	ReferencePerSecond float64 `json:"reference_per_second"`
	ReferenceRatio     float64 `json:"reference_ratio"`
	// Rounds is how many times rotations and the reference alternated; RatioMin
	// and RatioMax are the lowest and highest of the rounds' own ratios.
	Rounds           int     `json:"rounds"`
	RatioMin         float64 `json:"reference_ratio_min"`
	RatioMax         float64 `json:"reference_ratio_max"`
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
}

// FleetCounts are the run's final counts.
type FleetCounts struct {
	Total     int `json:"total"`
	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	Skipped   int `json:"skipped"`
}

func writeJSON(w io.Writer, s Summary) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
