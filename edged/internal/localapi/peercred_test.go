package localapi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"github.com/aegis-edge/aegis/edged/internal/agent"
	"github.com/aegis-edge/aegis/edged/keystore"
	"github.com/aegis-edge/aegis/edged/localclient"
)

// dialEnv makes the test binary, run as another user, ask the daemon in the named
// state dir for its status and exit 0 on success, 3 on refusal.
const dialEnv = "AEGIS_LOCALAPI_TEST_DIAL"

func TestMain(m *testing.M) {
	if dir := os.Getenv(dialEnv); dir != "" {
		_, err := localclient.New(dir).Status(context.Background(), connect.NewRequest(&edgev1.StatusRequest{}))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serveAt(t *testing.T, dir string, log io.Writer, opts ...Option) {
	t.Helper()
	srv, err := Listen(filepath.Join(dir, keystore.SocketFile), fixed{agent.Snapshot{NodeID: "n-7a3b2f000000"}},
		slog.New(slog.NewTextHandler(log, nil)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Close(context.Background()) })
}

func status(dir string) error {
	_, err := localclient.New(dir).Status(context.Background(), connect.NewRequest(&edgev1.StatusRequest{}))
	return err
}

// The kernel's word on who connected (SO_PEERCRED) is compared with the owner; here
// the owner is set to a uid the test does not run as, so the test's own, real
// connection is the stranger.
func TestSocketRefusesAnotherUID(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_PEERCRED is Linux's")
	}
	log := &lockedLog{}
	own, other := t.TempDir(), t.TempDir()
	serveAt(t, own, io.Discard)
	serveAt(t, other, log, WithOwner(os.Geteuid()+4242))
	if err := status(own); err != nil {
		t.Fatalf("the owner is refused: %v", err)
	}
	if err := status(other); err == nil {
		t.Fatal("a connection from a uid other than the owner's was served")
	}
	// The server logs on its own goroutine, possibly after the client saw the
	// refusal: wait for the line rather than read a buffer it is writing.
	logged := func() bool {
		l := log.String()
		return strings.Contains(l, "refused a connection from another user") && strings.Contains(l, fmt.Sprintf("peer_uid=%d", os.Geteuid()))
	}
	deadline := time.Now().Add(5 * time.Second)
	for !logged() {
		if time.Now().After(deadline) {
			t.Fatalf("refusal not logged with the peer's uid:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lockedLog is a log sink the server writes and the test reads at the same time.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// As root, a real process of another user connects. The file modes are opened up so
// that only the peer check stands between it and the daemon; the same process is
// served when the daemon's owner is its uid, so the refusal is the uid's doing.
func TestSocketRefusesAnotherUserProcess(t *testing.T) {
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("needs root on Linux to run a process as another user")
	}
	const nobody = 65534
	base, err := os.MkdirTemp("", "peercred")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	// The test binary, where the other user can run it.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "dial")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	dial := func(dir string) error {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), dialEnv+"="+dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	open := func(name string, opts ...Option) string {
		dir := filepath.Join(base, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		serveAt(t, dir, io.Discard, opts...)
		if err := os.Chmod(filepath.Join(dir, keystore.SocketFile), 0o666); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := dial(open("root-owned")); err == nil {
		t.Fatal("a daemon running as root served a process of uid 65534")
	}
	if err := dial(open("nobody-owned", WithOwner(nobody))); err != nil {
		t.Fatalf("the owner's own process was refused: %v", err)
	}
}
