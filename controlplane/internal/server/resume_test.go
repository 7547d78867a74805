package server

import (
	"testing"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/fleet"
)

// A resumed fleet run outwaits the reconnect hints of the shutdown before it: with
// the default 30s window a host may be told to come back at 31s, past the fleet's
// own 15s default.
func TestResumeGraceOutwaitsShutdownHints(t *testing.T) {
	if got := resumeGrace(0, 30*time.Second); got != 30*time.Second+fleet.DefaultResumeGrace {
		t.Fatalf("default: %v", got)
	}
	if got := resumeGrace(0, 5*time.Minute); got <= 5*time.Minute {
		t.Fatalf("a 5m window gives a grace of %v", got)
	}
	if got := resumeGrace(time.Second, 30*time.Second); got != time.Second {
		t.Fatalf("a set grace is kept: %v", got)
	}
}
