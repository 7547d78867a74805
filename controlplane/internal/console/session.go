package console

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// cookieName is the session cookie. Its value is 32 random bytes; the console keeps
// only their SHA-256, so a memory dump of the session table cannot be replayed as a
// cookie.
const cookieName = "aegis_console"

// maxSessions bounds the table: sign-ins beyond it push out the oldest session.
const maxSessions = 10000

type session struct {
	// token is the operator's API token: the console calls the API with it, so a
	// revoked token ends the session at its next page. It never leaves the server.
	token   string
	csrf    string
	tokenID string
	role    string
	tenant  string
	expires time.Time
	created time.Time
}

type sessions struct {
	mu   sync.Mutex
	byID map[string]*session // key: hex SHA-256 of the cookie value
}

func sessionKey(cookie string) string {
	h := sha256.Sum256([]byte(cookie))
	return hex.EncodeToString(h[:])
}

func randomText(rnd io.Reader) (string, error) {
	var b [32]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", fmt.Errorf("console: random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// create stores s and returns the cookie value naming it.
func (t *sessions) create(rnd io.Reader, s *session, now time.Time) (string, error) {
	cookie, err := randomText(rnd)
	if err != nil {
		return "", err
	}
	if s.csrf, err = randomText(rnd); err != nil {
		return "", err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var oldestKey string
	for k, v := range t.byID {
		if !now.Before(v.expires) {
			delete(t.byID, k)
		} else if oldestKey == "" || v.created.Before(t.byID[oldestKey].created) {
			oldestKey = k
		}
	}
	if len(t.byID) >= maxSessions {
		delete(t.byID, oldestKey)
	}
	t.byID[sessionKey(cookie)] = s
	return cookie, nil
}

// lookup returns the live session the request's cookie names, or nil.
func (t *sessions) lookup(r *http.Request, now time.Time) *session {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return nil
	}
	k := sessionKey(c.Value)
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.byID[k]
	if s == nil {
		return nil
	}
	if !now.Before(s.expires) {
		delete(t.byID, k)
		return nil
	}
	return s
}

// drop ends the session the request's cookie names.
func (t *sessions) drop(r *http.Request) {
	if c, err := r.Cookie(cookieName); err == nil {
		t.mu.Lock()
		delete(t.byID, sessionKey(c.Value))
		t.mu.Unlock()
	}
}

// dropToken ends every session signed in with the API token tokenID (it was
// refused by the API: revoked).
func (t *sessions) dropToken(tokenID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, v := range t.byID {
		if v.tokenID == tokenID {
			delete(t.byID, k)
		}
	}
}

// checkCSRF reports whether the request carries the session's CSRF token, in the
// form field "csrf" or the X-CSRF-Token header (for scripts).
func (s *session) checkCSRF(r *http.Request) bool {
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) == 1
}

func setSessionCookie(w http.ResponseWriter, value string, ttl time.Duration) {
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: value, Path: "/ui/",
		MaxAge: int(ttl / time.Second), HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode,
	})
}

func clearSessionCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: "", Path: "/ui/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode,
	})
}
