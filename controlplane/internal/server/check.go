package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/bootstrap"
	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"github.com/aegis-edge/aegis/controlplane/internal/store/postgres"
	"github.com/aegis-edge/aegis/controlplane/internal/store/sqlite"
	"github.com/aegis-edge/aegis/controlplane/internal/tlsca"
)

// CheckConfig is `serve --check-config`: everything a start would refuse that can be
// known without the database or the network: the bootstrap token's form and the
// TLS pair. It opens no listener and writes nothing.
func CheckConfig(cfg config.Config) error {
	var errs []error
	if cfg.BootstrapToken != "" {
		if _, _, err := apitoken.Parse(cfg.BootstrapToken); err != nil {
			errs = append(errs, fmt.Errorf("--bootstrap-token-file: %w", bootstrap.ErrBadAdminToken))
		}
	}
	if cfg.TLSCert != "" {
		if _, err := tlsca.Load(cfg.TLSCert, cfg.TLSKey); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// MigrationState is one of this binary's schema migrations and when the database
// applied it (zero: pending).
type MigrationState = sqlite.MigrationState

// MigrationStatus reports the configured database's migrations without changing it.
// newer lists versions the database has that this binary lacks.
func MigrationStatus(ctx context.Context, cfg config.Config) (states []MigrationState, newer []int, err error) {
	switch cfg.DatabaseKind {
	case config.DatabaseSQLite:
		return sqlite.MigrationStatus(ctx, cfg.DatabaseURL)
	case config.DatabasePostgres:
		ps, newer, err := postgres.MigrationStatus(ctx, cfg.DatabaseURL)
		for _, p := range ps {
			states = append(states, MigrationState(p))
		}
		return states, newer, err
	}
	return nil, nil, fmt.Errorf("unknown database kind %q", cfg.DatabaseKind)
}

// Migrate brings the configured database's schema up to date (what every start does
// anyway; a Helm pre-upgrade Job runs it first so new replicas start on a ready
// schema and a failing migration stops the rollout before any pod is replaced).
func Migrate(ctx context.Context, cfg config.Config) error {
	if cfg.DatabaseKind == config.DatabaseSQLite {
		if err := ensureDataDir(cfg.DataDir, slog.New(slog.DiscardHandler), os.Chmod); err != nil {
			return err
		}
	}
	st, err := OpenStore(ctx, cfg)
	if err != nil {
		return err
	}
	return st.Close()
}
