package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/config"
	"github.com/aegis-edge/aegis/controlplane/internal/server"
	"github.com/aegis-edge/aegis/controlplane/internal/store"
	"github.com/aegis-edge/aegis/controlplane/internal/tokens"
	"github.com/urfave/cli/v2"
)

// keysCommand is `controlplane keys`: the token-signing keys, managed directly in the
// database that running servers share, so it works beside them without a restart.
func keysCommand(stdout io.Writer) *cli.Command {
	var layers []flagLayer
	for _, l := range serveFlags() {
		if l.flag.Name == "data-dir" || l.flag.Name == "database-url" {
			layers = append(layers, l)
		}
	}
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", EnvVars: []string{"AEGIS_CONTROLPLANE_CONFIG"}, Usage: "optional YAML `FILE`, as for serve (only data_dir and database_url matter here)"},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "`FORMAT`: text or json"},
	}
	for _, l := range layers {
		flags = append(flags, l.flag)
	}
	return &cli.Command{
		Name:  "keys",
		Usage: "list or rotate the control plane's token-signing keys",
		Description: `NodeSecurityTokens are signed with the control plane's Ed25519 signing key and
name it by kid. Both subcommands work on the database a running control plane uses
(the same --data-dir / --database-url), and are safe while it runs.`,
		Subcommands: []*cli.Command{{
			Name:  "rotate",
			Usage: "make a new signing key the active one and retire the current one",
			Description: `In one transaction a new key with a new kid becomes the active signer and the
previous one is retired. Running servers sign with the new key within 10s, without
a restart; daemons get new-kid tokens at their next refresh and keep their streams.
The retired key keeps verifying the tokens it signed until every one of them has
expired (token TTL + clock skew + 10s), then the server deletes it.

Examples:
   controlplane keys rotate --data-dir /var/lib/aegis
   controlplane keys rotate --database-url postgres://aegis@db:5432/aegis -o json`,
			Flags: flags,
			Action: func(c *cli.Context) error {
				return withStore(c, layers, func(st store.Store) error {
					rot, err := tokens.RotateSigningKey(c.Context, st, rand.Reader, time.Now(), "system:controlplane keys rotate")
					if err != nil {
						return err
					}
					if c.String("output") == "json" {
						return json.NewEncoder(stdout).Encode(map[string]any{"kid": rot.New.KID, "retired": nonNil(rot.Retired)})
					}
					fmt.Fprintf(stdout, "active signing key: %s\n", rot.New.KID)
					for _, kid := range rot.Retired {
						fmt.Fprintf(stdout, "retired: %s (verifies its tokens until they expire, then is deleted)\n", kid)
					}
					return nil
				})
			},
		}, {
			Name:  "list",
			Usage: "list the signing keys: kid, created, retired, active",
			Description: `Examples:
   controlplane keys list --data-dir /var/lib/aegis
   controlplane keys list -o json    (one object per line: kid, created, retired, active)`,
			Flags: flags,
			Action: func(c *cli.Context) error {
				return withStore(c, layers, func(st store.Store) error {
					keys, err := st.ListSigningKeys(c.Context)
					if err != nil {
						return err
					}
					return printKeys(stdout, keys, c.String("output") == "json")
				})
			},
		}},
	}
}

// keyJSON is one line of `keys list -o json`.
type keyJSON struct {
	KID     string     `json:"kid"`
	Created time.Time  `json:"created"`
	Retired *time.Time `json:"retired"`
	Active  bool       `json:"active"`
}

func printKeys(w io.Writer, keys []store.SigningKey, asJSON bool) error {
	// ListSigningKeys is newest first: the first unretired key signs.
	active := ""
	if i := slices.IndexFunc(keys, func(k store.SigningKey) bool { return k.RetiredAt.IsZero() }); i >= 0 {
		active = keys[i].KID
	}
	if asJSON {
		enc := json.NewEncoder(w)
		for _, k := range keys {
			j := keyJSON{KID: k.KID, Created: k.CreatedAt.UTC(), Active: k.KID == active}
			if !k.RetiredAt.IsZero() {
				r := k.RetiredAt.UTC()
				j.Retired = &r
			}
			if err := enc.Encode(j); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KID\tCREATED\tRETIRED\tACTIVE")
	for _, k := range keys {
		retired := "-"
		if !k.RetiredAt.IsZero() {
			retired = k.RetiredAt.UTC().Format(time.RFC3339)
		}
		yes := "no"
		if k.KID == active {
			yes = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.KID, k.CreatedAt.UTC().Format(time.RFC3339), retired, yes)
	}
	return tw.Flush()
}

// withStore resolves --config, --data-dir and --database-url as serve does and opens
// the store they name. It refuses to create a database: a typo in --data-dir must not
// produce a second, empty control plane.
func withStore(c *cli.Context, layers []flagLayer, fn func(store.Store) error) error {
	if c.NArg() > 0 {
		return fmt.Errorf("%s takes no arguments, got %q: see controlplane keys %s --help", c.Command.Name, c.Args().First(), c.Command.Name)
	}
	if o := c.String("output"); o != "text" && o != "json" {
		return fmt.Errorf("invalid -o %q: want text or json", o)
	}
	var file config.File
	if p := c.String("config"); p != "" {
		f, err := config.LoadFile(p)
		if err != nil {
			return err
		}
		file = f
	}
	var given config.File
	for _, l := range layers {
		if c.IsSet(l.flag.Name) {
			l.set(&given, c.String(l.flag.Name))
		}
	}
	cfg, err := config.Merge(config.Defaults(), file, given).Resolve()
	if err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if cfg.DatabaseKind == config.DatabaseSQLite {
		if _, err := os.Stat(cfg.DatabaseURL); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no control plane database at %s: pass the --data-dir (or --database-url) that controlplane serve uses", cfg.DatabaseURL)
		}
	}
	st, err := server.OpenStore(c.Context, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	keys, err := st.ListSigningKeys(c.Context)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return errors.New("the database holds no signing key yet: start controlplane serve on it once first")
	}
	return fn(st)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
