// Command aegis-loadtest measures an Aegis Edge control plane's capacity (rotations,
// fleet runs) beside references measured in the same run; see `aegis-loadtest --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/aegis-edge/aegis/edged/testbed/loadtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := loadtest.Run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
