package hosts

import (
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"

	"github.com/aegis-edge/aegis/controlplane/internal/apitoken"
)

// MaxPageSize bounds one page of hosts.
const MaxPageSize = 1000

// Counts is how many hosts a query matched, in each status.
type Counts struct {
	Total, Connected, Disconnected, Revoked int
}

// Page is one page of a host listing.
type Page struct {
	Hosts []Host
	// Next is the token of the page after this one; "" on the last page.
	Next   string
	Counts Counts
}

// ListPage is List, ordered by name then node id, cut into pages of at most size
// hosts (1..MaxPageSize) starting after the position that token (a previous
// Page.Next, or "" for the first page) names. The counts cover every matching host,
// not only this page. A page token is a position, not a snapshot: hosts enrolled or
// removed between pages move the rest, never repeat one.
func (s *Service) ListPage(ctx context.Context, p apitoken.Principal, target string, size int, token string) (Page, error) {
	if size < 1 || size > MaxPageSize {
		return Page{}, fmt.Errorf("%w: page_size %d: ask for 1 to %d hosts a page", ErrInvalid, size, MaxPageSize)
	}
	afterName, afterID, err := decodePageToken(token)
	if err != nil {
		return Page{}, err
	}
	all, err := s.List(ctx, p, target)
	if err != nil {
		return Page{}, err
	}
	pg := Page{Counts: count(all)}
	slices.SortFunc(all, compareHosts)
	start := 0
	if token != "" {
		start, _ = slices.BinarySearchFunc(all, [2]string{afterName, afterID}, func(h Host, k [2]string) int {
			if c := cmp.Compare(h.Daemon.DisplayName, k[0]); c != 0 {
				return c
			}
			// Strictly after the token's host: equal counts as before.
			if h.Daemon.NodeID <= k[1] {
				return -1
			}
			return 1
		})
	}
	end := min(start+size, len(all))
	pg.Hosts = all[start:end]
	if end < len(all) {
		last := all[end-1].Daemon
		pg.Next = encodePageToken(last.DisplayName, last.NodeID)
	}
	return pg, nil
}

func compareHosts(a, b Host) int {
	if c := cmp.Compare(a.Daemon.DisplayName, b.Daemon.DisplayName); c != 0 {
		return c
	}
	return cmp.Compare(a.Daemon.NodeID, b.Daemon.NodeID)
}

// A page token is "<name>\x00<node id>" of the page's last host, base64url: opaque to
// clients, and harmless to forge (it only says where to start).
func encodePageToken(name, nodeID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(name + "\x00" + nodeID))
}

func decodePageToken(token string) (name, nodeID string, err error) {
	if token == "" {
		return "", "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	name, nodeID, ok := strings.Cut(string(raw), "\x00")
	if err != nil || !ok || nodeID == "" {
		return "", "", fmt.Errorf("%w: page_token is not one this server gave: start again from the first page", ErrInvalid)
	}
	return name, nodeID, nil
}

// WholePage is every host of a List as one page (no ordering, no next token).
func WholePage(all []Host) Page { return Page{Hosts: all, Counts: count(all)} }

func count(all []Host) Counts {
	c := Counts{Total: len(all)}
	for _, h := range all {
		switch h.Status {
		case StatusConnected:
			c.Connected++
		case StatusRevoked:
			c.Revoked++
		default:
			c.Disconnected++
		}
	}
	return c
}
