// Command aegisctl is the Aegis Edge CLI, also installed as `aegis`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/aegis-edge/aegis/aegisctl/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
