// Package localclient owns how a program on the host (aegisctl) reaches the local
// edged: an EdgeLocalService client over the Unix socket in the state directory, and
// how to tell "edged is not running" from a real failure.
package localclient

import (
	"context"
	"errors"
	"net"
	"net/http"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/aegis-edge/aegis/api/gen/aegis/edge/v1/edgev1connect"
	"github.com/aegis-edge/aegis/edged/keystore"
)

// baseURL is a placeholder host: the transport ignores it and dials the socket.
const baseURL = "http://edged.local"

// HTTPClient speaks HTTP/1.1 to the Unix socket at socketPath.
func HTTPClient(socketPath string) *http.Client {
	var d net.Dialer
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", socketPath)
			},
			MaxIdleConns:    1,
			IdleConnTimeout: 30 * time.Second,
		},
		Timeout: 30 * time.Second,
	}
}

// New is an EdgeLocalService client for the edged serving stateDir.
func New(stateDir string, opts ...connect.ClientOption) edgev1connect.EdgeLocalServiceClient {
	sock := keystore.Open(stateDir).File(keystore.SocketFile)
	return edgev1connect.NewEdgeLocalServiceClient(HTTPClient(sock), baseURL, opts...)
}

// IsNotRunning reports whether err means no edged is listening (no socket file, or a
// socket nobody accepts on), as opposed to an edged that answered with an error.
func IsNotRunning(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}
