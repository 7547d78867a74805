package enrolltoken

import (
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, server := range []string{"", "https://cp.example:7443"} {
		tok, err := New([]byte("ca-der"), server)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(tok.String())
		if err != nil {
			t.Fatalf("Parse(%q): %v", tok.String(), err)
		}
		if got != tok {
			t.Fatalf("round trip: got %+v want %+v", got, tok)
		}
		if !got.MatchesCA([]byte("ca-der")) || got.MatchesCA([]byte("other-ca")) {
			t.Fatal("CA pin does not discriminate")
		}
		if !SecretMatches(tok.Secret, SecretHash(tok.Secret)) || SecretMatches(tok.Secret+"0", SecretHash(tok.Secret)) {
			t.Fatal("secret hash does not discriminate")
		}
	}
}

func TestParseErrorsNeverEchoSecret(t *testing.T) {
	tok, _ := New([]byte("ca"), "https://x")
	bad := []string{
		"", "abc", tok.ID + "." + tok.Secret,
		strings.ToUpper(tok.ID) + "." + tok.Secret + ".AAAA",
		tok.ID + "." + tok.Secret + ".short",
		tok.ID + "." + tok.Secret + "x." + strings.Split(tok.String(), ".")[2],
		tok.String() + ".extra",
		strings.Join(strings.Split(tok.String(), ".")[:3], ".") + ".Zm9vOi8v", // "foo://"
	}
	for _, s := range bad {
		_, err := Parse(s)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want ErrMalformed", s, err)
			continue
		}
		if strings.Contains(err.Error(), tok.Secret) {
			t.Errorf("error echoes the secret: %v", err)
		}
	}
}

func FuzzParse(f *testing.F) {
	tok, _ := New([]byte("ca"), "https://cp:7443")
	f.Add(tok.String())
	f.Add("0123456789abcdef.0123456789abcdef0123456789abcdef.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(got.String())
		if err != nil || again != got {
			t.Fatalf("accepted %q but its own String() does not round-trip: %v", s, err)
		}
	})
}
