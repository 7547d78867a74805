package cli

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/localclient"
	"github.com/aegis-edge/aegis/edged/rotation"
	ucli "github.com/urfave/cli/v2"
	"google.golang.org/protobuf/types/known/durationpb"
)

// keysCommand is `edge keys`: one subcommand per operation on node keys (host side:
// rotate; operator side commands are added to the same list).
func (a *app) keysCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "keys",
		Usage:     "rotate this host's node key, or revoke a host's from the control plane",
		UsageText: a.name + " edge keys COMMAND [flags]",
		Description: "Example:\n  " + a.name + " edge keys rotate\n  " +
			a.name + " edge keys rotate --keep-old 72h -o json\n  " +
			a.name + " edge keys revoke-remote n-7a3b2f0c91d4\n  " +
			a.name + " edge keys policy set prod --target 'tags=AnyOf(prod)' --max-age 90d",
		Subcommands: []*ucli.Command{
			a.keysRotateCommand(),
			a.keysRevokeRemoteCommand(),
			a.keysPolicyCommand(),
		},
	}
}

func (a *app) keysRotateCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "rotate",
		Usage:     "replace this host's Ed25519 key without dropping its connection",
		UsageText: a.name + " edge keys rotate [--keep-old 24h] [--state-dir DIR] [-o json]",
		Description: "The five steps of a rotation:\n" +
			"  1. a fresh Ed25519 key is generated and written beside the old one (node.key.next, 0600);\n" +
			"  2. a RotateEdgeKeyRequest is signed by the old key (authority) and the new key (possession);\n" +
			"  3. it is sent to the control plane (RotateEdgeKey);\n" +
			"  4. the control plane swaps the key, blacklists the old token and issues a new one, in one transaction;\n" +
			"  5. the new key and token replace node.key and node.token, and the old key is moved to\n" +
			"     archive/<RFC 3339 UTC>.key, kept for --keep-old, then deleted by edged's housekeeping.\n\n" +
			"When edged runs, it does the rotation itself (its stream is not dropped: the next heartbeat\n" +
			"carries the new key); when it is stopped, this command does it on the state dir.\n" +
			"If anything fails the old key stays in use; a rotation interrupted by a crash or a lost\n" +
			"reply is finished or undone the next time edged or this command runs.\n\n" +
			"Example:\n  " + a.name + " edge keys rotate\n  " + a.name + " edge keys rotate --keep-old 1h --state-dir /var/lib/aegis/edge -o json",
		Flags: []ucli.Flag{
			&ucli.DurationFlag{Name: "keep-old", Value: rotation.DefaultKeepOld, Usage: "how long the archived old key is kept before it is deleted"},
			stateDirFlag,
			outputFlag,
		},
		Action: a.keysRotate,
	}
}

type rotateReport struct {
	NodeID            string  `json:"node_id"`
	RotationID        string  `json:"rotation_id"`
	OldKeyFingerprint string  `json:"old_key_fingerprint"`
	NewKeyFingerprint string  `json:"new_key_fingerprint"`
	ArchivedKey       string  `json:"archived_key"`
	ArchiveExpires    *string `json:"archive_expires"`
	TokenExpires      *string `json:"token_expires"`
	DoneBy            string  `json:"done_by"`
}

func (a *app) keysRotate(c *ucli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	out, err := outputFormat(c)
	if err != nil {
		return err
	}
	keep := c.Duration("keep-old")
	if keep <= 0 {
		return usagef("--keep-old must be a positive duration like 24h or 90m (got %s)", keep)
	}
	dir, err := a.stateDir(c)
	if err != nil {
		return err
	}
	var rep rotateReport
	by, err := a.onHost(c.Context,
		dir,
		func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			resp, err := localclient.New(dir.Path()).RotateKeys(ctx, connect.NewRequest(&edgev1.RotateKeysRequest{KeepOld: durationpb.New(keep)}))
			if err != nil {
				return err
			}
			m := resp.Msg
			rep = rotateReport{
				RotationID: m.GetRotationId(), OldKeyFingerprint: m.GetOldKeyFingerprint(), NewKeyFingerprint: m.GetNewKeyFingerprint(),
				ArchivedKey: m.GetArchivedKeyPath(), ArchiveExpires: timePtr(asTime(m.GetArchiveExpires())), TokenExpires: timePtr(asTime(m.GetTokenExpires())),
			}
			return nil
		},
		func(ctx context.Context, h *rotation.Host) error {
			res, err := h.Rotate(ctx, rotation.RotateOptions{KeepOld: keep})
			if err != nil {
				return err
			}
			rep = rotateReport{
				RotationID: res.RotationID, OldKeyFingerprint: res.OldKeyFingerprint, NewKeyFingerprint: res.NewKeyFingerprint,
				ArchivedKey: res.ArchivedKey, ArchiveExpires: timePtr(res.ArchiveExpires), TokenExpires: timePtr(res.TokenExpires),
			}
			return nil
		})
	if err != nil {
		return err
	}
	rep.DoneBy = by
	if node, err := dir.ReadNode(); err == nil {
		rep.NodeID = node.NodeID
	}
	if out == "json" {
		return writeJSON(a.env.Stdout, rep)
	}
	w := a.env.Stdout
	fmt.Fprintf(w, "rotated the key of %s (by %s; rotation %s)\n", rep.NodeID, by, rep.RotationID)
	fmt.Fprintf(w, "key_fingerprint: %s (was %s)\n", rep.NewKeyFingerprint, rep.OldKeyFingerprint)
	fmt.Fprintf(w, "token_expires: %s\n", derefDash(rep.TokenExpires))
	fmt.Fprintf(w, "old key archived: %s (deleted after %s)\n", rep.ArchivedKey, derefDash(rep.ArchiveExpires))
	return nil
}
