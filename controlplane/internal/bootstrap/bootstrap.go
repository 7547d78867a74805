// Package bootstrap owns what a control plane creates on its very first start: the
// default tenant, the first token-signing key, and the bootstrap admin API token
// written to <data-dir>/admin.token (0600) so the first operator can log in. Every
// later start finds them and changes nothing.
package bootstrap

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
	"github.com/aegis-edge/aegis/controlplane/internal/securefile"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
)

// ErrBadAdminToken: the given bootstrap admin token is not in the "<id>.<secret>" form.
// The message never repeats the text.
var ErrBadAdminToken = errors.New(`bootstrap admin token is malformed: want "<16 hex>.<32 hex>", e.g. from: printf '%s.%s\n' "$(openssl rand -hex 8)" "$(openssl rand -hex 16)"`)

// AdminTokenFile is the bootstrap admin token's file name in the data directory.
const AdminTokenFile = "admin.token"

// Config wires Run.
type Config struct {
	Store   store.Store
	DataDir string
	Now     func() time.Time
	Rand    io.Reader
	Logger  *slog.Logger
	// AdminToken, if set, is the bootstrap admin token to install instead of minting
	// one ("<id>.<secret>", as apitoken prints): on Kubernetes it comes from a Secret
	// the operator already holds, so nobody needs a shell in the pod to read
	// admin.token. No admin.token file is written then.
	AdminToken string
}

// Run creates whatever first-start state is missing. The admin token is minted only
// while the store holds no API token at all, so deleting admin.token after saving it
// elsewhere (good practice) never makes a restart mint a new admin credential.
func Run(ctx context.Context, cfg Config) error {
	err := run(ctx, cfg)
	if errors.Is(err, store.ErrConflict) {
		// Another replica bootstrapped at the same moment: its rows are there now.
		err = run(ctx, cfg)
	}
	return err
}

func run(ctx context.Context, cfg Config) error {
	now := cfg.Now().UTC()
	return cfg.Store.InTx(ctx, func(tx store.Tx) error {
		tenants, err := tx.ListTenants(ctx)
		if err != nil {
			return fmt.Errorf("list tenants: %w", err)
		}
		var def store.Tenant
		for _, t := range tenants {
			if t.Name == "default" {
				def = t
			}
		}
		if def.ID == "" {
			id, err := randHex(cfg.Rand, 4)
			if err != nil {
				return err
			}
			def = store.Tenant{ID: "t-" + id, Name: "default", Kind: store.TenantTeam, CreatedAt: now}
			if err := tx.CreateTenant(ctx, def); err != nil {
				return fmt.Errorf("create default tenant: %w", err)
			}
			cfg.Logger.Info("created default tenant", "tenant", def.ID)
		}

		keys, err := tx.ListSigningKeys(ctx)
		if err != nil {
			return fmt.Errorf("list signing keys: %w", err)
		}
		if len(keys) == 0 {
			k, err := tokens.NewSigningKey(cfg.Rand, now)
			if err != nil {
				return err
			}
			if err := tx.InsertSigningKey(ctx, k); err != nil {
				return fmt.Errorf("store signing key: %w", err)
			}
			cfg.Logger.Info("created token-signing key", "kid", k.KID)
		}

		apiTokens, err := tx.ListAPITokens(ctx, "")
		if err != nil {
			return fmt.Errorf("list api tokens: %w", err)
		}
		if len(apiTokens) > 0 {
			return nil
		}
		rnd := cfg.Rand
		if cfg.AdminToken != "" {
			id, secret, err := apitoken.Parse(cfg.AdminToken)
			if err != nil {
				return ErrBadAdminToken
			}
			// Mint reads the id and secret bytes from its random source: handing it
			// the given token's bytes yields exactly that token and its record.
			raw, _ := hex.DecodeString(id + secret)
			rnd = bytes.NewReader(raw)
		}
		text, rec, err := apitoken.Mint(rnd, def.ID, store.RoleAdmin, "bootstrap", now)
		if err != nil {
			return err
		}
		if err := tx.CreateAPIToken(ctx, rec); err != nil {
			return fmt.Errorf("store bootstrap admin token: %w", err)
		}
		if cfg.AdminToken != "" {
			cfg.Logger.Info("installed the bootstrap admin API token from --bootstrap-token-file", "token_id", rec.ID)
			return nil
		}
		// Written inside the transaction: if the file cannot be written, the token is
		// not committed either, and the next start tries again.
		path := filepath.Join(cfg.DataDir, AdminTokenFile)
		if err := securefile.Write(path, []byte(text+"\n"), 0o600); err != nil {
			return fmt.Errorf("write bootstrap admin token: %w", err)
		}
		cfg.Logger.Info("wrote bootstrap admin API token (log in with it, then store it safely)", "path", path, "token_id", rec.ID)
		return nil
	})
}

func randHex(rnd io.Reader, n int) (string, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(rnd, b); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return hex.EncodeToString(b), nil
}
