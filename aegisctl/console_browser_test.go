// The web console in a real headless Chromium (Debian's chromium package, which
// .ci/run installs), against the REAL binaries: a control plane, three edged
// daemons, and aegis for what an operator does beside the page.
package aegisctl_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumPath finds the browser; the test fails without one (install the Debian
// package chromium, as .ci/run does), it never skips.
func chromiumPath(t *testing.T) string {
	for _, name := range []string{os.Getenv("AEGIS_CHROMIUM"), "chromium", "chromium-browser"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH: install it (apt-get install chromium; .ci/run does) or set AEGIS_CHROMIUM")
	return ""
}

// artifactsDir is where screenshots go: $AEGIS_ARTIFACTS_DIR/console, or
// artifacts/console at the repository root (CI keeps that folder).
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("AEGIS_ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "artifacts")
	}
	dir = filepath.Join(dir, "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// aegisAs runs the aegis CLI with its own HOME (its own login profile).
type aegisAs struct {
	t    *testing.T
	home string
}

func (a aegisAs) run(args ...string) string {
	a.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "aegis"), args...)
	cmd.Env = append(os.Environ(), "HOME="+a.home, "AEGIS_EDGE_STATE_DIR=")
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		a.t.Fatalf("aegis %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	return strings.TrimSpace(string(out))
}

func newAegis(t *testing.T, root, name, server, tokenFile, caFile string) aegisAs {
	t.Helper()
	home := filepath.Join(root, name)
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	a := aegisAs{t: t, home: home}
	a.run("login", "--server", server, "--token-file", tokenFile, "--ca-file", caFile)
	return a
}

// startDaemon runs a real binary until the test ends (SIGTERM, then wait).
func startDaemon(t *testing.T, logFile, bin string, args ...string) {
	t.Helper()
	log, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		_ = log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("%s:\n%s", filepath.Base(logFile), b)
		}
	})
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitForListen(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeSecret(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

var enrolledAs = regexp.MustCompile(`enrolled as (n-[0-9a-f]{12})`)

func TestConsoleInBrowser(t *testing.T) {
	chrome := chromiumPath(t)
	root, err := os.MkdirTemp(shortTemp(), "aegisui")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	server := "https://127.0.0.1:" + strconv.Itoa(port)
	cpDir := filepath.Join(root, "cp")
	real := filepath.Join(binDir, "real")
	startDaemon(t, filepath.Join(root, "cp.log"), filepath.Join(real, "controlplane"), "serve",
		"--listen", "127.0.0.1:"+strconv.Itoa(port), "--data-dir", cpDir, "--heartbeat-interval", "1s")
	waitForFile(t, filepath.Join(cpDir, "admin.token"))
	waitForListen(t, "127.0.0.1:"+strconv.Itoa(port))
	ca := filepath.Join(cpDir, "ca.crt")
	admin := newAegis(t, root, "home-admin", server, filepath.Join(cpDir, "admin.token"), ca)

	opToken := admin.run("api-tokens", "create", "--role", "operator", "--name", "ui-operator")
	viewerToken := admin.run("api-tokens", "create", "--role", "viewer", "--name", "ui-viewer")
	writeSecret(t, filepath.Join(root, "op.token"), opToken)
	op := newAegis(t, root, "home-op", server, filepath.Join(root, "op.token"), ca)

	policy := filepath.Join(root, "edged.yaml")
	if err := os.WriteFile(policy, []byte("security_contexts:\n  ops:\n    cmd.run:\n      - command: /bin/sh\n        args: [\"-c\", \"*\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Three hosts of the operator's tenant, each with its daemon.
	names := []string{"web-1", "web-2", "db-1"}
	var nodes, stateDirs []string
	for i, name := range names {
		tok := op.run("edge", "enrollment-tokens", "create", "--tags", "ui")
		dir := filepath.Join(root, fmt.Sprintf("h%d", i+1))
		m := enrolledAs.FindStringSubmatch(op.run("edge", "enroll", "--token", tok, "--name", name, "--state-dir", dir))
		if m == nil {
			t.Fatalf("enroll %s: no node id", name)
		}
		nodes, stateDirs = append(nodes, m[1]), append(stateDirs, dir)
		args := []string{"run", "--state-dir", dir}
		if name == "db-1" {
			// db-1 may run /bin/sh in context ops: the live fleet run below waits on it.
			op.run("edge", "hosts", "set", "--security-context", "ops", m[1])
			args = append(args, "--config", policy)
		}
		startDaemon(t, filepath.Join(root, name+".log"), filepath.Join(real, "edged"), args...)
	}
	// A host of another tenant (enrolled; its daemon need not run).
	other := admin.run("tenants", "create", "other", "--kind", "team")
	writeSecret(t, filepath.Join(root, "other.token"), admin.run("api-tokens", "create", "--role", "operator", "--tenant", other, "--name", "other-op"))
	otherOp := newAegis(t, root, "home-other", server, filepath.Join(root, "other.token"), ca)
	m := enrolledAs.FindStringSubmatch(otherOp.run("edge", "enroll", "--token", otherOp.run("edge", "enrollment-tokens", "create"),
		"--name", "other-1", "--state-dir", filepath.Join(root, "hb")))
	if m == nil {
		t.Fatal("enroll other-1: no node id")
	}
	otherNode := m[1]

	alloc, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// The control plane's CA is its own; the test trusts it as aegis does, by
		// the file, so the browser is told not to check.
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.UserDataDir(filepath.Join(root, "chromium")),
		chromedp.WindowSize(1400, 900),
	)
	defer cancel()
	bctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	// The first run starts the browser and must not carry a timeout (it would stop
	// the browser); each later step gets its own.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	step := func() (context.Context, context.CancelFunc) { return context.WithTimeout(bctx, 90*time.Second) }
	failAt := func(what string, err error) {
		t.Helper()
		body, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		loc, _ := chromedp.Run(bctx, chromedp.Location())
		t.Fatalf("%s: %v\nat %s:\n%s", what, err, loc, body)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			failAt(what, err)
		}
	}
	// until waits, in the page, for a JavaScript condition to hold.
	until := func(what, js string) {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingTimeout(90*time.Second))); err != nil {
			failAt(what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			failAt("text of "+sel, err)
		}
		return strings.TrimSpace(s)
	}
	evalString := func(what, js string, opts ...chromedp.EvaluateOption) string {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js, opts...))
		if err != nil {
			failAt(what, err)
		}
		return s
	}
	refusedAs := func() string {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		a, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.ID("refused"), "data-reason"))
		if err != nil {
			failAt("refusal reason", err)
		}
		return a.Value
	}
	signIn := func(token string) {
		t.Helper()
		do("sign in", chromedp.Navigate(server+"/ui/login"), chromedp.WaitVisible(chromedp.ID("token")),
			chromedp.SendKeys(chromedp.ID("token"), token), chromedp.Click(chromedp.ID("signin")),
			chromedp.WaitVisible(chromedp.ID("whoami")))
	}
	screenshot := func(name string) {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			failAt("screenshot "+name, err)
		}
		if err := os.WriteFile(filepath.Join(artifactsDir(t), name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	row := func(node string) string { return fmt.Sprintf(`#hosts tr[data-node=%q]`, node) }

	// Sign in as the operator: three hosts Connected.
	signIn(opToken)
	if who := text("#whoami"); !strings.HasPrefix(who, "operator of tenant") {
		t.Fatalf("signed in as %q", who)
	}
	until("three hosts Connected", `document.querySelectorAll('#hosts td[data-status="Connected"]').length === 3 && document.getElementById('count-connected').textContent === "3"`)
	for _, n := range nodes {
		if st := text(row(n) + ` td[data-status]`); st != "Connected" {
			t.Fatalf("%s: %s", n, st)
		}
	}
	if strings.Contains(text("#hosts"), otherNode) {
		t.Fatal("another tenant's host is in the operator's list")
	}
	screenshot("hosts.png")

	// Rotate web-1 beside the open page: its fingerprint changes there, no reload.
	evalString("mark the page", `window.aegisNoReload = "still the same page"`)
	// Keyboard focus on web-1's link must survive the live updates.
	evalString("focus web-1", fmt.Sprintf(`document.querySelector(%q).focus(); "ok"`, row(nodes[0])+" a"))
	oldFP := text(row(nodes[0]) + " code.fp")
	admin.run("edge", "keys", "rotate", "--state-dir", stateDirs[0])
	var st struct {
		FP string `json:"key_fingerprint"`
	}
	if err := json.Unmarshal([]byte(admin.run("edge", "status", "--state-dir", stateDirs[0], "-o", "json")), &st); err != nil || st.FP == "" || st.FP == oldFP {
		t.Fatalf("status after rotation: %+v (%v), old %s", st, err, oldFP)
	}
	until("the new fingerprint on the open page", fmt.Sprintf(`(document.querySelector(%q) || {}).textContent === %q`, row(nodes[0])+" code.fp", st.FP))
	if same := evalString("no reload", `window.aegisNoReload || "reloaded"`); same != "still the same page" {
		t.Fatalf("the page was reloaded (%q)", same)
	}
	if f := evalString("focus after updates", `(document.activeElement.closest("tr") || {dataset: {}}).dataset.node || "lost"`); f != nodes[0] {
		t.Fatalf("keyboard focus after a live update: %q, want web-1's row", f)
	}
	until("web-1 still Connected", fmt.Sprintf(`(document.querySelector(%q) || {}).textContent === "Connected"`, row(nodes[0])+" td[data-status]"))

	// web-1's page: the new key, a token expiry, the rotation in its history.
	do("open web-1", chromedp.Navigate(server+"/ui/hosts/"+nodes[0]), chromedp.WaitVisible(chromedp.ID("host-fp")))
	if fp, exp, hist := text("#host-fp"), text("#token-expires"), text("#rotation-history"); fp != st.FP ||
		!regexp.MustCompile(`^20[0-9]{2}-[0-9]{2}-[0-9]{2}T`).MatchString(exp) || !strings.Contains(hist, "ok") {
		t.Fatalf("web-1's page: key %s, token expires %q, rotations %q", fp, exp, hist)
	}
	screenshot("host.png")

	// Revoke web-2 from its page, confirmed by name: Revoked there and in the CLI.
	do("open web-2", chromedp.Navigate(server+"/ui/hosts/"+nodes[1]), chromedp.Click(chromedp.ID("revoke")), chromedp.WaitVisible(chromedp.ID("confirm-text")))
	if c := text("#confirm-text"); !strings.Contains(c, "web-2 ("+nodes[1]+")") {
		t.Fatalf("the confirmation does not name the host: %q", c)
	}
	do("confirm", chromedp.Click(chromedp.ID("confirm-revoke")), chromedp.WaitVisible(chromedp.ID("host-status")))
	if s := text("#host-status"); s != "Revoked" {
		t.Fatalf("web-2 after revoke: %s", s)
	}
	if !regexp.MustCompile(`(?m)^` + nodes[1] + ` +web-2 +Revoked `).MatchString(op.run("edge", "hosts", "list")) {
		t.Fatalf("aegis edge hosts list does not show web-2 Revoked:\n%s", op.run("edge", "hosts", "list"))
	}

	// A forged cross-site POST, from another origin's page, with the session
	// cookie present: refused.
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/ui/hosts/%s/revoke"><input type="hidden" name="confirm" value="%s"><input type="hidden" name="csrf" value="guessed"><button id="go">win a prize</button></form>`,
			server, nodes[2], nodes[2])
	}))
	defer attacker.Close()
	do("cross-site post", chromedp.Navigate(attacker.URL), chromedp.Click(chromedp.ID("go")), chromedp.WaitVisible(chromedp.ID("refused")))
	if reason := refusedAs(); reason != "cross_origin" {
		t.Fatalf("cross-site post refused as %q, want cross_origin", reason)
	}
	if !regexp.MustCompile(`(?m)^` + nodes[2] + ` +db-1 +Connected `).MatchString(op.run("edge", "hosts", "list")) {
		t.Fatal("db-1 is not Connected after the refused cross-site post")
	}

	// Another tenant's host: not found.
	do("other tenant's host", chromedp.Navigate(server+"/ui/hosts/"+otherNode), chromedp.WaitVisible(chromedp.ID("refused")))
	if reason := refusedAs(); reason != "not_found" {
		t.Fatalf("another tenant's host: %q, want not_found", reason)
	}

	// A fleet run followed live, wave by wave, to its summary.
	runID := op.run("edge", "fleet", "keys", "rotate", "--target", "tags=AnyOf(ui)", "--mode", "sequential", "--detach")
	do("open the run", chromedp.Navigate(server+"/ui/fleet/"+runID), chromedp.WaitVisible(chromedp.ID("run-lines")))
	until("the run's summary", `document.getElementById('run-lines').dataset.done === "true"`)
	lines := text("#run-lines")
	summary := text("#run-summary")
	for _, want := range []string{"[wave 1] starting 1 of", "[" + nodes[0] + " web-1] ✔ rotated (old key archived; new token bound)", "[" + nodes[2] + " db-1] ✔ rotated"} {
		if !strings.Contains(lines, want) {
			t.Fatalf("run page lacks %q:\n%s", want, lines)
		}
	}
	if !regexp.MustCompile(`^done in [0-9.]+s: 2 rotated, 0 failed, 1 skipped, 0 not started$`).MatchString(summary) {
		t.Fatalf("run summary %q", summary)
	}
	screenshot("fleet-run.png")
	do("fleet list", chromedp.Navigate(server+"/ui/fleet"), chromedp.WaitVisible(chromedp.ID("runs")))
	if !strings.Contains(text("#runs"), runID) {
		t.Fatal("the fleet list lacks the run")
	}

	// A run that cannot finish before the page is open: db-1's command waits for a
	// file the test creates once the page shows the run under way.
	gate := filepath.Join(root, "gate")
	liveID := op.run("edge", "fleet", "run", "--target", "nodes="+nodes[2], "--detach", "--",
		"/bin/sh", "-c", "while [ ! -e "+gate+" ]; do sleep 0.05; done")
	do("open the live run", chromedp.Navigate(server+"/ui/fleet/"+liveID), chromedp.WaitVisible(chromedp.ID("cancel-run")))
	until("the live run's first wave", `document.getElementById('run-lines').textContent.includes("[wave 1] starting 1 of 1 nodes")`)
	if st := text("#run-state"); st != "running" || text("#run-summary") != "" {
		t.Fatalf("the run is %q (summary %q) before its command could finish", st, text("#run-summary"))
	}
	evalString("mark the run page", `window.aegisNoReload = "still the same page"`)
	writeSecret(t, gate, "go")
	until("the live run's summary", `document.getElementById('run-lines').dataset.done === "true"`)
	if !strings.Contains(text("#run-lines"), "["+nodes[2]+" db-1] ✔ succeeded (exit 0)") ||
		!regexp.MustCompile(`^done in [0-9.]+s: 1 succeeded, 0 failed, 0 skipped, 0 not started$`).MatchString(text("#run-summary")) ||
		text("#run-state") != "succeeded" {
		t.Fatalf("live run page at its end:\n%s\n%s", text("#run-lines"), text("#run-summary"))
	}
	if same := evalString("no reload", `window.aegisNoReload || "reloaded"`); same != "still the same page" {
		t.Fatal("the run page was reloaded")
	}
	if evalString("cancel button gone", `String(document.getElementById('cancel-run') === null)`) != "true" {
		t.Fatal("a finished run still offers cancel")
	}

	// Cancel from the page: db-1 (in flight, waiting on a second gate) finishes,
	// web-1 (the next wave) is not started.
	gate2 := filepath.Join(root, "gate2")
	cancelID := op.run("edge", "fleet", "run", "--target", "nodes="+nodes[2]+","+nodes[0], "--mode", "sequential", "--detach", "--",
		"/bin/sh", "-c", "while [ ! -e "+gate2+" ]; do sleep 0.05; done")
	do("open the run to cancel", chromedp.Navigate(server+"/ui/fleet/"+cancelID), chromedp.WaitVisible(chromedp.ID("cancel-run")))
	until("its first wave", `document.getElementById('run-lines').textContent.includes("[wave 1] starting 1 of 2 nodes")`)
	{
		// The form posts and the page navigates back to the run: wait for that.
		ctx, cancel := step()
		if resp, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.ID("cancel-run"))); err != nil || resp.Status != http.StatusOK {
			failAt("cancel", fmt.Errorf("%v (response %+v)", err, resp))
		}
		cancel()
	}
	do("the run page after cancel", chromedp.WaitVisible(chromedp.ID("run-lines")))
	writeSecret(t, gate2, "go")
	until("the cancelled run's summary", `document.getElementById('run-lines').dataset.done === "true"`)
	if l, sum := text("#run-lines"), text("#run-summary"); !strings.Contains(l, "run cancelled") ||
		!strings.Contains(l, "["+nodes[0]+" web-1] - not started (cancelled)") ||
		!regexp.MustCompile(`^done in [0-9.]+s: 1 succeeded, 0 failed, 0 skipped, 1 not started$`).MatchString(sum) {
		t.Fatalf("cancelled run page:\n%s\n%s", l, sum)
	}

	// The viewer: no revoke button, and a forged revoke POST (with the page's own
	// CSRF token) is refused by the API's role check.
	do("sign out", chromedp.Navigate(server+"/ui/hosts"), chromedp.Click(chromedp.CSS("header form.who button")), chromedp.WaitVisible(chromedp.ID("token")))
	signIn(viewerToken)
	do("viewer opens db-1", chromedp.Navigate(server+"/ui/hosts/"+nodes[2]), chromedp.WaitVisible(chromedp.ID("host-status")))
	if evalString("no revoke button", `String(document.getElementById('revoke') === null && document.querySelector('form[action$="/revoke"]') === null)`) != "true" {
		t.Fatal("the viewer sees a revoke button")
	}
	forged := evalString("forged revoke", fmt.Sprintf(`fetch("/ui/hosts/%[1]s/revoke", {method: "POST",
		headers: {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content},
		body: "confirm=%[1]s"}).then(r => r.text().then(b => r.status + " " + r.headers.get("X-Aegis-Refused") + " " + b))`, nodes[2]),
		chromedp.EvalAwaitPromise)
	if !strings.HasPrefix(forged, "403 permission_denied") || !strings.Contains(forged, "viewer API token may not call RevokeHost") {
		t.Fatalf("viewer's forged revoke: %q", forged)
	}
	if !regexp.MustCompile(`(?m)^` + nodes[2] + ` +db-1 +Connected `).MatchString(op.run("edge", "hosts", "list")) {
		t.Fatal("db-1 is not Connected after the viewer's forged revoke")
	}

	// No API token reached the control plane's log.
	cpLog, _ := os.ReadFile(filepath.Join(root, "cp.log"))
	for _, tok := range []string{opToken, viewerToken} {
		_, secret, _ := strings.Cut(tok, ".")
		if strings.Contains(string(cpLog), secret) {
			t.Fatal("an API token's secret is in the control plane's log")
		}
	}
}
