//go:build !linux

package loadtest

import (
	"errors"
	"time"
)

// threadCPU: no per-thread CPU clock here; the connect scenario keeps its
// wall-clock verify reference.
func threadCPU() (time.Duration, error) {
	return 0, errors.New("no per-thread CPU clock on this system")
}
