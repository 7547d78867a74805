package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/enrolltoken"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/seal"
	"github.com/aegis-edge/aegis/controlplane/cptest"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"controlplane"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// enrolledKID enrolls a fresh key and returns the kid of the token it gets.
func enrolledKID(t *testing.T, srv *cptest.Server) string {
	t.Helper()
	tok, err := enrolltoken.Parse(srv.EnrollmentToken(t))
	if err != nil {
		t.Fatal(err)
	}
	c := srv.ClusterClient()
	ch, err := c.Challenge(context.Background(), connect.NewRequest(&edgev1.ChallengeRequest{Purpose: edgev1.ChallengePurpose_CHALLENGE_PURPOSE_ENROLL}))
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	nonce := ch.Msg.GetNonce()
	resp, err := c.Enroll(context.Background(), connect.NewRequest(&edgev1.EnrollRequest{
		EnrollmentTokenId: tok.ID, EnrollmentSecret: tok.Secret, PublicKey: pub, Nonce: nonce,
		Signature: ed25519.Sign(priv, seal.EnrollMessage(nonce, tok.ID, pub)), Hostname: "h", Os: "linux",
	}))
	if err != nil {
		t.Fatal(err)
	}
	head, _, _ := strings.Cut(resp.Msg.GetNodeSecurityToken(), ".")
	raw, _ := base64.RawURLEncoding.DecodeString(head)
	var h struct {
		KID string `json:"kid"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	return h.KID
}

func listKeys(t *testing.T, dbArgs []string) []keyJSON {
	t.Helper()
	code, out, errOut := runCmd(t, append([]string{"keys", "list", "-o", "json"}, dbArgs...)...)
	if code != 0 {
		t.Fatalf("keys list: exit %d: %s", code, errOut)
	}
	var keys []keyJSON
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var k keyJSON
		if err := json.Unmarshal(sc.Bytes(), &k); err != nil {
			t.Fatalf("keys list line %q: %v", sc.Text(), err)
		}
		keys = append(keys, k)
	}
	return keys
}

// `controlplane keys rotate` run beside a serving control plane, on its data dir or
// database: the server signs with the new key without a restart.
func TestKeysRotateBesideRunningServer(t *testing.T) {
	cptest.ForEachStore(t, func(t *testing.T, opts cptest.Options) {
		opts.HousekeepingInterval = 20 * time.Millisecond
		srv := cptest.Start(t, opts)
		dbArgs := []string{"--data-dir", srv.DataDir}
		if opts.DatabaseURL != "" {
			dbArgs = append(dbArgs, "--database-url", opts.DatabaseURL)
		}

		before := listKeys(t, dbArgs)
		if len(before) != 1 || !before[0].Active || before[0].Retired != nil {
			t.Fatalf("keys before rotation = %+v, want one active key", before)
		}
		kid0 := before[0].KID
		if got := enrolledKID(t, srv); got != kid0 {
			t.Fatalf("token kid %s, want %s", got, kid0)
		}

		code, out, errOut := runCmd(t, append([]string{"keys", "rotate", "-o", "json"}, dbArgs...)...)
		if code != 0 {
			t.Fatalf("keys rotate: exit %d: %s", code, errOut)
		}
		var rot struct {
			KID     string   `json:"kid"`
			Retired []string `json:"retired"`
		}
		if err := json.Unmarshal([]byte(out), &rot); err != nil {
			t.Fatalf("keys rotate output %q: %v", out, err)
		}
		if rot.KID == "" || rot.KID == kid0 || len(rot.Retired) != 1 || rot.Retired[0] != kid0 {
			t.Fatalf("keys rotate = %+v, want a new kid retiring %s", rot, kid0)
		}

		after := listKeys(t, dbArgs)
		if len(after) != 2 || after[0].KID != rot.KID || !after[0].Active || after[1].KID != kid0 || after[1].Active || after[1].Retired == nil {
			t.Fatalf("keys after rotation = %+v", after)
		}
		deadline := time.Now().Add(10 * time.Second)
		for enrolledKID(t, srv) != rot.KID {
			if time.Now().After(deadline) {
				t.Fatal("the running server never started signing with the rotated key")
			}
			time.Sleep(20 * time.Millisecond)
		}

		code, out, _ = runCmd(t, append([]string{"keys", "list"}, dbArgs...)...)
		if code != 0 || !strings.Contains(out, "KID") || !strings.Contains(out, rot.KID) || !strings.Contains(out, kid0) {
			t.Fatalf("keys list text: exit %d\n%s", code, out)
		}
	})
}

func TestKeysRefusesMissingDatabase(t *testing.T) {
	dir := t.TempDir()
	code, _, errOut := runCmd(t, "keys", "rotate", "--data-dir", dir)
	if code == 0 || !strings.Contains(errOut, "no control plane database") {
		t.Fatalf("keys rotate on an empty dir: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = runCmd(t, "keys", "list", "--data-dir", dir, "-o", "yaml")
	if code == 0 || !strings.Contains(errOut, "want text or json") {
		t.Fatalf("keys list -o yaml: exit %d, stderr %q", code, errOut)
	}
}
