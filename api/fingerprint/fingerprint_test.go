package fingerprint

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

func TestOfMatchesOpenSSHStyle(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	got := Of(key)
	sum := sha256.Sum256(key)
	want := "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
	if got != want {
		t.Fatalf("Of = %q, want %q", got, want)
	}
	if strings.HasSuffix(got, "=") || len(got) != len("SHA256:")+43 {
		t.Fatalf("fingerprint %q is padded or the wrong length", got)
	}
	if Of([]byte("other")) == got {
		t.Fatal("different keys share a fingerprint")
	}
}
