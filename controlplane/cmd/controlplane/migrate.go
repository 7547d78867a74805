package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/server"
	"github.com/urfave/cli/v2"
)

// migrateLayers are the serve settings migrate reads: only where the database is.
func migrateLayers(all []flagLayer) []flagLayer {
	var out []flagLayer
	for _, l := range all {
		if slices.Contains([]string{"data-dir", "database-url"}, l.flag.Name) {
			out = append(out, l)
		}
	}
	return out
}

func migrateCommand(stdout io.Writer, configFlag cli.Flag, serveLayers []flagLayer) *cli.Command {
	layers := migrateLayers(serveLayers)
	flags := []cli.Flag{configFlag}
	for _, l := range layers {
		flags = append(flags, l.flag)
	}
	output := &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "`FORMAT`: text or json"}
	up := func(c *cli.Context) error {
		if c.NArg() > 0 {
			return fmt.Errorf("unknown migrate subcommand %q: use controlplane migrate [up] or controlplane migrate status", c.Args().First())
		}
		cfg, err := resolveConfig(c, layers)
		if err != nil {
			return err
		}
		before, _, err := server.MigrationStatus(c.Context, cfg)
		if err != nil {
			return err
		}
		if err := server.Migrate(c.Context, cfg); err != nil {
			return err
		}
		after, _, err := server.MigrationStatus(c.Context, cfg)
		if err != nil {
			return err
		}
		applied := pending(before) - pending(after)
		latest := after[len(after)-1].Version
		fmt.Fprintf(stdout, "schema at version %d (%s): applied %d migration(s)\n", latest, cfg.DatabaseKind, applied)
		return nil
	}
	return &cli.Command{
		Name:      "migrate",
		Usage:     "bring the database schema up to date, or show which migrations it has (status)",
		UsageText: "controlplane migrate [up] [--database-url URL | --data-dir DIR] [--config FILE]\ncontrolplane migrate status [-o json]",
		Description: `Every start of controlplane serve applies missing migrations itself, under a lock, so
replicas starting together are safe. Run migrate on its own to change the schema
before the new release's servers start: the Helm chart does it in a pre-install and
pre-upgrade Job, so a failing migration stops the upgrade before any pod is replaced.

A database whose schema is newer than this binary is refused: run the newer release.
Settings come from the same flags, AEGIS_* variables and --config file as serve.

Examples:
   controlplane migrate --database-url postgres://aegis@db:5432/aegis?sslmode=require
   controlplane migrate status -o json`,
		Flags:  flags,
		Action: up,
		Subcommands: []*cli.Command{{
			Name:      "up",
			Usage:     "apply the missing migrations (the same as migrate alone)",
			UsageText: "controlplane migrate up [--database-url URL | --data-dir DIR] [--config FILE]",
			Flags:     flags,
			Action:    up,
		}, {
			Name:      "status",
			Usage:     "list this binary's migrations and whether the database has each; changes nothing",
			UsageText: "controlplane migrate status [--database-url URL | --data-dir DIR] [-o json]",
			Flags:     append(slices.Clone(flags), output),
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return fmt.Errorf("migrate status takes no arguments, got %q", c.Args().First())
				}
				if o := c.String("output"); o != "text" && o != "json" {
					return fmt.Errorf("invalid -o %q: want text or json", o)
				}
				cfg, err := resolveConfig(c, layers)
				if err != nil {
					return err
				}
				states, newer, err := server.MigrationStatus(c.Context, cfg)
				if err != nil {
					return err
				}
				return writeMigrationStatus(stdout, c.String("output"), cfg.DatabaseKind, states, newer)
			},
		}},
	}
}

func pending(states []server.MigrationState) int {
	n := 0
	for _, s := range states {
		if s.AppliedAt.IsZero() {
			n++
		}
	}
	return n
}

func writeMigrationStatus(w io.Writer, format, kind string, states []server.MigrationState, newer []int) error {
	type row struct {
		Version   int    `json:"version"`
		Name      string `json:"name"`
		Applied   bool   `json:"applied"`
		AppliedAt string `json:"applied_at,omitempty"`
	}
	rows := make([]row, 0, len(states))
	for _, s := range states {
		r := row{Version: s.Version, Name: s.Name, Applied: !s.AppliedAt.IsZero()}
		if r.Applied {
			r.AppliedAt = s.AppliedAt.UTC().Format(time.RFC3339)
		}
		rows = append(rows, r)
	}
	if format == "json" {
		if newer == nil {
			newer = []int{}
		}
		return json.NewEncoder(w).Encode(struct {
			Database   string `json:"database"`
			Pending    int    `json:"pending"`
			Migrations []row  `json:"migrations"`
			Unknown    []int  `json:"unknown_versions"`
		}{kind, pending(states), rows, newer})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tNAME\tAPPLIED_AT")
	for _, r := range rows {
		at := r.AppliedAt
		if !r.Applied {
			at = "pending"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", r.Version, r.Name, at)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n := pending(states); n > 0 {
		fmt.Fprintf(w, "%d migration(s) pending: run controlplane migrate\n", n)
	}
	if len(newer) > 0 {
		fmt.Fprintf(w, "the database has migrations %v this binary does not know: a newer release ran; do not serve it with this one\n", newer)
	}
	return nil
}
