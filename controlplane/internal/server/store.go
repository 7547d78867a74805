package server

import (
	"context"
	"fmt"

	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
)

// OpenStore opens (and migrates) the configured database. `controlplane keys` uses it
// beside a running server: both stores are safe to share between processes.
func OpenStore(ctx context.Context, cfg config.Config) (store.Store, error) {
	switch cfg.DatabaseKind {
	case config.DatabaseSQLite:
		st, err := sqlite.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("open sqlite database %s: %w", cfg.DatabaseURL, err)
		}
		return st, nil
	case config.DatabasePostgres:
		st, err := postgres.Open(ctx, cfg.DatabaseURL, postgres.Options{MaxConns: cfg.DatabaseMaxConns})
		if err != nil {
			// Not the URL: it may hold a password.
			return nil, fmt.Errorf("open postgres database: %w", err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("unknown database kind %q", cfg.DatabaseKind)
}
