// Package localapi owns edged's EdgeLocalService: Connect over plain HTTP/1.1 on the
// Unix socket <state>/edged.sock (mode 0600, inside the 0700 state dir, and serving
// only connections whose peer runs as the daemon's own user), which is how
// aegisctl on the same host asks the running daemon for its status, and has it
// rotate its key, refresh its token or log out.
package localapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/rotation"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// StatusSource is what the service reports from (the running agent).
type StatusSource interface {
	Status() agent.Snapshot
}

// Service implements EdgeLocalService.
type Service struct {
	src StatusSource
}

// NewService wraps src.
func NewService(src StatusSource) *Service { return &Service{src: src} }

var _ edgev1connect.EdgeLocalServiceHandler = (*Service)(nil)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// Status reports the daemon's snapshot.
func (s *Service) Status(context.Context, *connect.Request[edgev1.StatusRequest]) (*connect.Response[edgev1.StatusResponse], error) {
	snap := s.src.Status()
	resp := &edgev1.StatusResponse{
		NodeId:           snap.NodeID,
		Status:           snap.Status,
		KeyFingerprint:   snap.KeyFingerprint,
		TokenExpires:     ts(snap.TokenExpires),
		ServerUrl:        snap.ServerURL,
		ConnectedSince:   ts(snap.ConnectedSince),
		LastError:        snap.LastError,
		LastHeartbeatAck: ts(snap.LastHeartbeatAck),
		KeyDueAt:         ts(snap.KeyDueAt),
		NextRotationAt:   ts(snap.NextRotationAt),
		KeySince:         ts(snap.KeySince),
		RotationError:    snap.RotationError,
	}
	if snap.MaxKeyAge > 0 {
		resp.MaxKeyAge = durationpb.New(snap.MaxKeyAge)
	}
	if snap.Tenant.ID != "" {
		resp.Tenant = &edgev1.Tenant{Id: snap.Tenant.ID, Name: snap.Tenant.Name, Kind: snap.Tenant.Kind}
	}
	return connect.NewResponse(resp), nil
}

// Server is the socket listener and its HTTP server.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
}

// Option adjusts Listen.
type Option func(*listenConfig)

type listenConfig struct{ owner int }

// WithOwner sets the uid whose connections are served besides root's (default: this
// process's effective uid, the owner of the state directory).
func WithOwner(uid int) Option { return func(c *listenConfig) { c.owner = uid } }

// Listen binds the socket at path. Any file already there is removed first: the caller
// holds the daemon lock, so a socket left there belongs to a daemon that is gone.
// Only connections from the owning user and root are served (SO_PEERCRED, see
// admit), besides the socket's mode 0600.
func Listen(path string, src StatusSource, logger *slog.Logger, opts ...Option) (*Server, error) {
	cfg := listenConfig{owner: os.Geteuid()}
	for _, o := range opts {
		o(&cfg)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Closing the listener must not unlink a socket a successor may already own;
	// Close removes it explicitly instead.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.Handle(edgev1connect.NewEdgeLocalServiceHandler(NewService(src)))
	return &Server{
		path: path,
		ln:   &ownerOnly{Listener: ln, owner: cfg.owner, log: logger},
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
	}, nil
}

// Serve blocks until Close; it returns nil after a Close.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close stops serving and removes the socket file.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// Operator is what a running daemon does for the host's owner. The agent implements
// it; a source without it answers Unimplemented.
type Operator interface {
	RotateKeys(ctx context.Context, opts rotation.RotateOptions) (rotation.Result, error)
	RefreshToken(ctx context.Context, why string) (time.Time, error)
	Logout(ctx context.Context) (rotation.LogoutResult, error)
}

func (s *Service) operator() (Operator, error) {
	op, ok := s.src.(Operator)
	if !ok {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("this edged cannot change its identity"))
	}
	return op, nil
}

// toConnect keeps the daemon's one-line message and picks the code from its kind.
func toConnect(err error) error {
	code := connect.CodeInternal
	switch {
	case errors.Is(err, keystore.ErrNotEnrolled), errors.Is(err, rotation.ErrRevoked), errors.Is(err, rotation.ErrRefused):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, rotation.ErrUnreachable), errors.Is(err, rotation.ErrPending), errors.Is(err, agent.ErrNotServing):
		code = connect.CodeUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	}
	return connect.NewError(code, err)
}

// RotateKeys runs the five-step rotation in the daemon, so its in-memory key and the
// files never disagree.
func (s *Service) RotateKeys(ctx context.Context, req *connect.Request[edgev1.RotateKeysRequest]) (*connect.Response[edgev1.RotateKeysResponse], error) {
	op, err := s.operator()
	if err != nil {
		return nil, err
	}
	keep := req.Msg.GetKeepOld().AsDuration()
	if keep < 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("keep_old must not be negative"))
	}
	// The rotation must finish even if the CLI goes away mid-way.
	res, err := op.RotateKeys(context.WithoutCancel(ctx), rotation.RotateOptions{KeepOld: keep})
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&edgev1.RotateKeysResponse{
		RotationId:        res.RotationID,
		OldKeyFingerprint: res.OldKeyFingerprint,
		NewKeyFingerprint: res.NewKeyFingerprint,
		ArchivedKeyPath:   res.ArchivedKey,
		TokenExpires:      ts(res.TokenExpires),
		ArchiveExpires:    ts(res.ArchiveExpires),
	}), nil
}

// RefreshToken re-attests with the current key and swaps the new token in.
func (s *Service) RefreshToken(ctx context.Context, _ *connect.Request[edgev1.RefreshTokenRequest]) (*connect.Response[edgev1.RefreshTokenResponse], error) {
	op, err := s.operator()
	if err != nil {
		return nil, err
	}
	exp, err := op.RefreshToken(context.WithoutCancel(ctx), "requested with `aegis edge token refresh`")
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&edgev1.RefreshTokenResponse{TokenExpires: ts(exp)}), nil
}

// Logout tells the control plane (best effort), removes the identity and stops the
// daemon's stream.
func (s *Service) Logout(ctx context.Context, _ *connect.Request[edgev1.EdgeLocalServiceLogoutRequest]) (*connect.Response[edgev1.EdgeLocalServiceLogoutResponse], error) {
	op, err := s.operator()
	if err != nil {
		return nil, err
	}
	res, err := op.Logout(context.WithoutCancel(ctx))
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&edgev1.EdgeLocalServiceLogoutResponse{ServerNotified: res.ServerNotified, NodeId: res.NodeID}), nil
}
