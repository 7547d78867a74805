package rpc_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aegis-edge/aegis/api/fingerprint"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/nodetoken"
	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
	"github.com/golang-jwt/jwt/v5"
)

// kidOf reads the kid from a token's header (unverified: the test only looks).
func kidOf(t *testing.T, token string) string {
	t.Helper()
	head, _, ok := strings.Cut(token, ".")
	if !ok {
		t.Fatalf("not a JWS: %q", token)
	}
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		KID string `json:"kid"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	return h.KID
}

func storedKIDs(t *testing.T, srv *cptest.Server) []string {
	t.Helper()
	keys, err := srv.Store.ListSigningKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range keys {
		kids = append(kids, k.KID)
	}
	return kids
}

// attestUntilKID attests probe until its token carries kid: the server reloads its
// keys on a timer. The clock moves a second per try so the per-node limits refill.
func attestUntilKID(t *testing.T, clock *fakeClock, probe *node, kid string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		clock.Advance(time.Second)
		tok, err := probe.attest(t)
		if err != nil {
			t.Fatalf("attest: %v", err)
		}
		if kidOf(t, tok) == kid {
			probe.token = tok
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server still signs with kid %s, want %s", kidOf(t, tok), kid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A signing-key rotation made beside a running server: new tokens carry the new kid,
// tokens of the old kid keep verifying (a live stream never notices, a new stream
// with one is accepted), a daemon switches tokens on its stream at its next refresh,
// and the old key is deleted only once every token it signed has expired.
func TestSigningKeyRotation(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		clock := newFakeClock()
		opts.Now = clock.Now
		opts.TokenTTL = time.Hour
		opts.MaxClockSkew = time.Minute
		opts.HousekeepingInterval = 20 * time.Millisecond
		srv := cptest.Start(t, opts)
		ctx := context.Background()

		n := enroll(t, srv, srv.EnrollmentToken(t))
		m := enroll(t, srv, srv.EnrollmentToken(t))
		probe := enroll(t, srv, srv.EnrollmentToken(t))
		kid0 := kidOf(t, n.token)
		st := n.open(t, clock.Now)
		st.hello()
		st.heartbeat()

		rot, err := tokens.RotateSigningKey(ctx, srv.Store, rand.Reader, clock.Now(), "test")
		if err != nil {
			t.Fatal(err)
		}
		retiredAt := clock.Now()
		if rot.New.KID == kid0 || !slices.Equal(rot.Retired, []string{kid0}) {
			t.Fatalf("rotation = new %s retired %v, want a new kid retiring [%s]", rot.New.KID, rot.Retired, kid0)
		}
		attestUntilKID(t, clock, probe, rot.New.KID)

		// The live stream of the old kid's token goes on.
		st.heartbeat()
		// A new stream with an old-kid token that nobody refreshed is accepted.
		if kidOf(t, m.token) != kid0 {
			t.Fatal("m's token should be of the old kid")
		}
		sm := m.open(t, clock.Now)
		sm.hello()
		sm.heartbeat()

		// n's next refresh brings a new-kid token, carried on the same stream.
		fresh, err := n.attest(t)
		if err != nil {
			t.Fatalf("attest after rotation: %v", err)
		}
		if kidOf(t, fresh) != rot.New.KID {
			t.Fatalf("refreshed token kid %s, want %s", kidOf(t, fresh), rot.New.KID)
		}
		n.token = fresh
		st.heartbeat()
		st.heartbeat()

		// A token signed by a key the control plane never had is refused.
		_, priv := newKey(t)
		forged, _, err := nodetoken.Signer{KID: "0123456789abcdef", Key: priv}.Issue(nodetoken.Claims{
			RegisteredClaims: jwt.RegisteredClaims{Subject: n.id},
			TenantID:         n.tenant.GetId(),
			Cnf:              nodetoken.Confirmation{KeyFingerprint: fingerprint.Of(n.pub)},
		}, clock.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		n.token = forged
		sf := n.open(t, clock.Now)
		sf.send(sf.envelope(hello(), nil))
		sf.expectReject(edgev1.RejectReason_REJECT_REASON_TOKEN_INVALID)
		n.token = fresh

		// Up to its last second, an old-kid token opens a stream.
		mExp := peekToken(t, m.token).Expires()
		clock.Advance(mExp.Sub(clock.Now()) - time.Second)
		time.Sleep(100 * time.Millisecond) // several housekeeping rounds
		m.open(t, clock.Now).hello()
		// Every old-kid token has expired one TTL after the retirement; the key stays
		// at least through the allowed skew beyond that.
		clock.Advance(retiredAt.Add(time.Hour + time.Minute).Sub(clock.Now()))
		time.Sleep(100 * time.Millisecond)
		if kids := storedKIDs(t, srv); !slices.Contains(kids, kid0) {
			t.Fatalf("old key deleted before its tokens could have expired: %v", kids)
		}
		clock.Advance(retiredAt.Add(tokens.SigningKeyRetention(time.Hour, time.Minute)).Sub(clock.Now()) + time.Second)
		deadline := time.Now().Add(5 * time.Second)
		for slices.Contains(storedKIDs(t, srv), kid0) {
			if time.Now().After(deadline) {
				t.Fatalf("old key %s still stored after its tokens expired", kid0)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if kids := storedKIDs(t, srv); !slices.Equal(kids, []string{rot.New.KID}) {
			t.Fatalf("keys after purge = %v, want only %s", kids, rot.New.KID)
		}
		// The active key is never purged: the daemon goes on attesting.
		if tok, err := probe.attest(t); err != nil || kidOf(t, tok) != rot.New.KID {
			t.Fatalf("attest after purge: kid %v err %v", tok, err)
		}
	})
}

// A token signed with a key this server has not loaded yet (another replica, or a
// rotation newer than the last reload) makes it reload the keys at once rather
// than refuse; the reload also makes it sign with the new key.
func TestUnknownKIDReloadsKeys(t *testing.T) {
	forEachStore(t, func(t *testing.T, opts cptest.Options) {
		// Default housekeeping: the timed reload is 10s away.
		srv := cptest.Start(t, opts)
		ctx := context.Background()
		n := enroll(t, srv, srv.EnrollmentToken(t))
		kid0 := kidOf(t, n.token)

		rot, err := tokens.RotateSigningKey(ctx, srv.Store, rand.Reader, time.Now(), "test")
		if err != nil {
			t.Fatal(err)
		}
		// Before any reload the server still signs with the old key.
		if tok, err := n.attest(t); err != nil || kidOf(t, tok) != kid0 {
			t.Fatalf("attest right after rotation: %v %v", tok, err)
		}
		// What another replica that already reloaded would issue.
		tok, _, err := nodetoken.Signer{KID: rot.New.KID, Key: ed25519.PrivateKey(rot.New.PrivateKey)}.Issue(nodetoken.Claims{
			RegisteredClaims: jwt.RegisteredClaims{Subject: n.id},
			TenantID:         n.tenant.GetId(),
			Cnf:              nodetoken.Confirmation{KeyFingerprint: fingerprint.Of(n.pub)},
		}, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		n.token = tok
		st := n.open(t, time.Now)
		st.hello()
		st.heartbeat()
		fresh, err := n.attest(t)
		if err != nil {
			t.Fatal(err)
		}
		if kidOf(t, fresh) != rot.New.KID {
			t.Fatalf("after the reload the server signs with %s, want %s", kidOf(t, fresh), rot.New.KID)
		}
	})
}
