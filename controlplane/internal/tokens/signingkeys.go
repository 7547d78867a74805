package tokens

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// KeyReloadEvery is how often a running control plane reads the signing keys again,
// so a rotation made by `controlplane keys rotate` (another process) reaches every
// replica within this long, without a restart.
const KeyReloadEvery = 10 * time.Second

// NewSigningKey generates an Ed25519 token-signing key with a fresh random kid.
func NewSigningKey(rnd io.Reader, now time.Time) (store.SigningKey, error) {
	pub, priv, err := ed25519.GenerateKey(rnd)
	if err != nil {
		return store.SigningKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	var kid [8]byte
	if _, err := io.ReadFull(rnd, kid[:]); err != nil {
		return store.SigningKey{}, fmt.Errorf("signing key id: %w", err)
	}
	return store.SigningKey{KID: hex.EncodeToString(kid[:]), PrivateKey: priv, PublicKey: pub, CreatedAt: now.UTC()}, nil
}

// Rotation is the outcome of RotateSigningKey.
type Rotation struct {
	New     store.SigningKey
	Retired []string // kids that were active before
}

// RotateSigningKey makes a new signing key the active signer and retires every key
// that was active, in one transaction. Retired keys stay in the store, verifying the
// tokens they signed, until PurgeSigningKeys finds those tokens expired. Running
// servers start signing with the new key at their next reload (KeyReloadEvery).
func RotateSigningKey(ctx context.Context, st store.Store, rnd io.Reader, now time.Time, actor string) (Rotation, error) {
	var rot Rotation
	err := st.InTx(ctx, func(tx store.Tx) error {
		k, err := NewSigningKey(rnd, now)
		if err != nil {
			return err
		}
		if err := tx.InsertSigningKey(ctx, k); err != nil {
			return fmt.Errorf("store signing key: %w", err)
		}
		// Listed after the insert, so that of two rotations racing under READ
		// COMMITTED the later one retires the earlier one's key too.
		all, err := tx.ListSigningKeys(ctx)
		if err != nil {
			return fmt.Errorf("list signing keys: %w", err)
		}
		rot = Rotation{New: k}
		for _, old := range all {
			if old.KID == k.KID || !old.RetiredAt.IsZero() {
				continue
			}
			if err := tx.RetireSigningKey(ctx, old.KID, now); err != nil {
				return fmt.Errorf("retire signing key: %w", err)
			}
			rot.Retired = append(rot.Retired, old.KID)
		}
		if _, err := tx.AppendAudit(ctx, store.AuditEntry{
			At: now, Actor: actor, Action: "signing_key_rotate", Result: "ok",
			Details: map[string]string{"kid": k.KID, "retired": strings.Join(rot.Retired, ",")},
		}); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		return nil
	})
	if err != nil {
		return Rotation{}, err
	}
	return rot, nil
}

// SigningKeyRetention is how long after its retirement a key may still have signed
// tokens that have not expired: a replica keeps signing with it until its next
// reload, each token lives ttl, and a token is judged against clocks that may
// differ by maxSkew.
func SigningKeyRetention(ttl, maxSkew time.Duration) time.Duration {
	return KeyReloadEvery + ttl + maxSkew
}

// PurgeSigningKeys deletes the retired keys whose every token has expired at now
// (see SigningKeyRetention) and returns their kids.
func PurgeSigningKeys(ctx context.Context, st store.Tx, now time.Time, ttl, maxSkew time.Duration) ([]string, error) {
	kids, err := st.DeleteSigningKeysRetiredBefore(ctx, now.Add(-SigningKeyRetention(ttl, maxSkew)))
	if err != nil {
		return nil, fmt.Errorf("purge retired signing keys: %w", err)
	}
	return kids, nil
}
