package cli

import (
	"slices"
	"strings"
	"testing"
)

// TestFlagsAfterArguments pins the one shared fix: on every command a flag may follow
// the positional arguments, and nothing after "--" is ever taken for ours.
func TestFlagsAfterArguments(t *testing.T) {
	root := (&app{name: "aegis"}).newApp()
	cases := []struct{ in, want string }{
		{"edge keys revoke-remote n-1 -o json", "edge keys revoke-remote -o json n-1"},
		{"edge hosts get n-1 -o json", "edge hosts get -o json n-1"},
		{"edge hosts get n-1 --output=json", "edge hosts get --output=json n-1"},
		{"edge hosts set n-1 --security-context ro --no-refresh", "edge hosts set --security-context ro --no-refresh n-1"},
		{"edge hosts tag n-1 --add a,b -o json", "edge hosts tag --add a,b -o json n-1"},
		{"edge exec n-1 -o json -- /bin/ls -o json", "edge exec -o json n-1 -- /bin/ls -o json"},
		{"edge exec --deadline 5s n-1 /bin/ls", "edge exec --deadline 5s n-1 /bin/ls"},
		{"edge exec n-1 -o json /bin/ls -l --all", "edge exec -o json n-1 /bin/ls -l --all"},
		{"edge fleet run --target all /usr/bin/uptime -p", "edge fleet run --target all /usr/bin/uptime -p"},
		{"edge fleet run --target all -- /bin/echo --mode x", "edge fleet run --target all -- /bin/echo --mode x"},
		{"edge fleet runs watch fr-1 -o json", "edge fleet runs watch -o json fr-1"},
		{"edge enrollment-tokens revoke et-1 --bogus", "edge enrollment-tokens revoke --bogus et-1"},
		{"tenants create acme --kind team", "tenants create --kind team acme"},
		{"help edge hosts list", "edge hosts list --help"},
		{"edge help hosts", "edge hosts --help"},
		{"edge hosts get n-1 --help", "edge hosts get --help n-1"},
		{"edge bogus -o json", "edge bogus -o json"},
	}
	for _, c := range cases {
		got := normalizeArgs(root, append([]string{"aegis"}, strings.Fields(c.in)...))[1:]
		if want := strings.Fields(c.want); !slices.Equal(got, want) {
			t.Errorf("%s\n got: %s\nwant: %s", c.in, strings.Join(got, " "), c.want)
		}
	}
}
