package rpc_test

import (
	"context"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
)

// An attestation supersedes the tokens bound to the key it attested, and only those.
// Under PostgreSQL's READ COMMITTED an Attest that read the node's key just before a
// rotation committed would otherwise blacklist the rotation's fresh token (bound to
// the new key) as "refreshed". Here the rotation's token is planted directly, as the
// racing commit would leave it, bound to a key the attestation did not prove.
func TestAttestSupersedesOnlyTokensOfTheAttestedKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		n := enroll(t, srv, srv.EnrollmentToken(t))

		otherPub, _ := newKey(t)
		now := time.Now().UTC()
		foreign := store.NodeToken{JTI: "jti-of-another-key", NodeID: n.id, KeyFingerprint: fingerprint.Of(otherPub),
			IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := srv.Store.InsertNodeToken(ctx, foreign); err != nil {
			t.Fatal(err)
		}
		active, err := srv.Store.ActiveNodeTokens(ctx, n.id, now)
		if err != nil {
			t.Fatal(err)
		}
		var enrollJTI string
		for _, tok := range active {
			if tok.JTI != foreign.JTI {
				enrollJTI = tok.JTI
			}
		}
		if enrollJTI == "" {
			t.Fatal("the enrollment token is not recorded as active")
		}

		if _, err := n.attest(t); err != nil {
			t.Fatal(err)
		}
		if listed, err := srv.Store.IsBlacklisted(ctx, enrollJTI); err != nil || !listed {
			t.Errorf("the superseded token of the attested key is not blacklisted (listed=%v, err=%v)", listed, err)
		}
		if listed, err := srv.Store.IsBlacklisted(ctx, foreign.JTI); err != nil || listed {
			t.Errorf("a token bound to another key was blacklisted by the attestation (listed=%v, err=%v)", listed, err)
		}
	})
}
