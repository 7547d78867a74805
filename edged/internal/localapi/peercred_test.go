package localapi

import (
	"context"
	"errors"
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

// The rule itself: the owner and root are served; any other uid is refused as
// other_user, a peer the kernel cannot name as unidentified.
func TestAdmitRules(t *testing.T) {
	const owner = 998
	for _, tc := range []struct {
		uid  int
		err  error
		want PeerReason // "" when served
	}{
		{uid: owner},
		{uid: 0},
		{uid: 1000, want: ReasonOtherUser},
		{uid: 65534, want: ReasonOtherUser},
		{uid: -1, err: errPeerUnknown, want: ReasonUnidentified},
	} {
		err := admit(tc.uid, tc.err, owner)
		if tc.want == "" {
			if err != nil {
				t.Errorf("uid %d refused: %v", tc.uid, err)
			}
			continue
		}
		var pe *PeerRefusedError
		if !errors.As(err, &pe) || pe.Reason != tc.want {
			t.Errorf("uid %d: %v, want a PeerRefusedError with reason %s", tc.uid, err, tc.want)
			continue
		}
		if tc.want == ReasonOtherUser && (pe.UID != tc.uid || !strings.Contains(err.Error(), "only the daemon's user")) {
			t.Errorf("uid %d: refusal %+v does not name the peer and the rule", tc.uid, pe)
		}
	}
}

// The kernel's word on who connected (SO_PEERCRED) is compared with the owner; here
// the owner is set to a uid the test does not run as, so the test's own, real
// connection is the stranger, unless the test runs as root, which is served.
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
	if os.Geteuid() == 0 {
		if err := status(other); err != nil {
			t.Fatalf("root is refused by a daemon of another user: %v", err)
		}
		return
	}
	if err := status(other); err == nil {
		t.Fatal("a connection from a uid other than the owner's was served")
	}
	waitLogged(t, log, fmt.Sprintf("peer_uid=%d", os.Geteuid()))
}

// waitLogged waits for the refusal line: the server logs on its own goroutine,
// possibly after the client saw the refusal.
func waitLogged(t *testing.T, log *lockedLog, peer string) {
	t.Helper()
	logged := func() bool {
		l := log.String()
		return strings.Contains(l, "refused a connection from another user") && strings.Contains(l, "reason=other_user") && strings.Contains(l, peer)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !logged() {
		if time.Now().After(deadline) {
			t.Fatalf("refusal not logged with its reason and the peer's uid (%s):\n%s", peer, log.String())
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
	const nobody, stranger = 65534, 65533
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
	dial := func(dir string, uid uint32) error {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), dialEnv+"="+dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	open := func(name string, log io.Writer, opts ...Option) string {
		dir := filepath.Join(base, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		serveAt(t, dir, log, opts...)
		if err := os.Chmod(filepath.Join(dir, keystore.SocketFile), 0o666); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := dial(open("root-owned", io.Discard), nobody); err == nil {
		t.Fatal("a daemon running as root served a process of uid 65534")
	}
	// A packaged host: the daemon runs as its own user (here nobody's uid).
	log := &lockedLog{}
	pkg := open("nobody-owned", log, WithOwner(nobody))
	if err := dial(pkg, nobody); err != nil {
		t.Fatalf("the owner's own process was refused: %v", err)
	}
	if err := status(pkg); err != nil {
		t.Fatalf("root (sudo aegis edge status) was refused by the daemon's user's socket: %v", err)
	}
	// The attack: another unprivileged user, with the socket's mode opened up.
	if err := dial(pkg, stranger); err == nil {
		t.Fatal("a daemon running as uid 65534 served a process of uid 65533")
	}
	waitLogged(t, log, fmt.Sprintf("peer_uid=%d", stranger))
}
