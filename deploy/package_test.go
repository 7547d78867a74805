package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestEdgedPackage builds the .deb and .rpm with the pinned nfpm, checks the .deb's
// files and modes, installs it into a scratch root (never this machine's own) and
// runs its maintainer scripts there, and checks the systemd unit with systemd-analyze.
func TestEdgedPackage(t *testing.T) {
	for _, tool := range []string{"dpkg-deb", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (apt-get install dpkg systemd; .ci/run does): %v", tool, err)
		}
	}
	root := repoRoot(t)
	work := t.TempDir()
	stage := filepath.Join(work, "stage")
	bin := filepath.Join(stage, "dist", "pkg")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	static := []string{"CGO_ENABLED=0", "GOOS=linux"}
	run(t, root, static, "go", "build", "-o", filepath.Join(bin, "edged"), "./edged/cmd/edged")
	run(t, root, static, "go", "build", "-o", filepath.Join(bin, "aegisctl"), "./aegisctl/cmd/aegisctl")
	nfpm := filepath.Join(work, "nfpm")
	run(t, root, nil, "go", "build", "-o", nfpm, "github.com/goreleaser/nfpm/v2/cmd/nfpm")
	for _, dir := range []string{"deploy", "docs"} {
		if err := os.Symlink(filepath.Join(root, dir), filepath.Join(stage, dir)); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(work, "out")
	os.Mkdir(out, 0o755)
	env := []string{"VERSION=1.2.3", "GOARCH=" + runtime.GOARCH, "GOVERSION=" + runtime.Version()}
	run(t, stage, env, nfpm, "package", "-f", "deploy/nfpm/nfpm.yaml", "-p", "deb", "-t", out)
	run(t, stage, env, nfpm, "package", "-f", "deploy/nfpm/nfpm.yaml", "-p", "rpm", "-t", out)
	debs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(out, "*.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("packages built: %v %v", debs, rpms)
	}
	if raw, err := os.ReadFile(rpms[0]); err != nil || !bytes.HasPrefix(raw, []byte{0xed, 0xab, 0xee, 0xdb}) {
		t.Fatalf("%s is not an RPM (lead magic): %v", rpms[0], err)
	} else if !bytes.Contains(raw, []byte("Built with "+runtime.Version()+".")) {
		// RPM has no free-form fields: the description names the toolchain (rpm -qi).
		t.Errorf("the RPM's description does not name the Go toolchain %s", runtime.Version())
	}
	deb := debs[0]

	// The file list and modes.
	listing := run(t, "", nil, "dpkg-deb", "-c", deb)
	want := map[string]string{
		"./usr/bin/edged":                              "-rwxr-xr-x root/root",
		"./usr/bin/aegisctl":                           "-rwxr-xr-x root/root",
		"./usr/lib/systemd/system/aegis-edged.service": "-rw-r--r-- root/root",
		"./etc/aegis/edged.yaml":                       "-rw-r----- root/root",
		"./usr/lib/sysusers.d/aegis-edge.conf":         "-rw-r--r-- root/root",
		"./usr/share/man/man1/edged.1":                 "-rw-r--r-- root/root",
		"./usr/share/man/man1/aegisctl.1":              "-rw-r--r-- root/root",
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		path := f[5]
		seen[path] = true
		if w, ok := want[path]; ok && f[0]+" "+f[1] != w {
			t.Errorf("%s: %s %s, want %s", path, f[0], f[1], w)
		}
		if path == "./usr/bin/aegis" && (len(f) < 8 || f[0][0] != 'l' || f[7] != "/usr/bin/aegisctl") {
			t.Errorf("aegis is not a link to aegisctl: %q", line)
		}
	}
	for p := range want {
		if !seen[p] {
			t.Errorf("package lacks %s:\n%s", p, listing)
		}
	}
	if !seen["./usr/bin/aegis"] {
		t.Error("package lacks the aegis link")
	}
	ctl := filepath.Join(work, "control")
	run(t, "", nil, "dpkg-deb", "-e", deb, ctl)
	if conf, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); strings.TrimSpace(string(conf)) != "/etc/aegis/edged.yaml" {
		t.Errorf("conffiles %q: edged.yaml must be a conffile (config|noreplace)", conf)
	}
	if info := run(t, "", nil, "dpkg-deb", "-f", deb, "Built-Using-Go"); strings.TrimSpace(info) != runtime.Version() {
		t.Errorf("Built-Using-Go %q, want %s", info, runtime.Version())
	}

	// Installed into a scratch root; the scripts honour $DPKG_ROOT as dpkg --root does.
	sroot := filepath.Join(work, "root")
	run(t, "", nil, "dpkg-deb", "-x", deb, sroot)
	scriptEnv := []string{"DPKG_ROOT=" + sroot}
	run(t, "", scriptEnv, filepath.Join(ctl, "postinst"), "configure")
	state := filepath.Join(sroot, "var/lib/aegis-edge")
	fi, err := os.Stat(state)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir after postinst: %v %v", fi, err)
	}
	// The daemon's system user, in the scratch root's own user database; it owns the
	// state dir and reads the config through its group.
	uid, gid := systemUser(t, sroot, "aegis-edge")
	t.Logf("system user aegis-edge: uid %d gid %d", uid, gid)
	if uid == 0 || gid == 0 {
		t.Fatalf("aegis-edge is uid %d gid %d: the daemon must not run as root", uid, gid)
	}
	assertOwner(t, state, uid, gid)
	conf := filepath.Join(sroot, "etc/aegis/edged.yaml")
	assertOwner(t, conf, 0, gid)
	if fi, _ := os.Stat(conf); fi.Mode().Perm() != 0o640 {
		t.Errorf("edged.yaml mode %v, want 0640", fi.Mode().Perm())
	}
	// A host without systemd-sysusers: postinst falls back to useradd.
	fallbackUser(t, deb, ctl)
	// An upgrade runs postinst again: same user, nothing breaks.
	run(t, "", scriptEnv, filepath.Join(ctl, "postinst"), "configure", "1.2.2")
	if u2, g2 := systemUser(t, sroot, "aegis-edge"); u2 != uid || g2 != gid {
		t.Errorf("second postinst changed the user: %d:%d, was %d:%d", u2, g2, uid, gid)
	}
	v := run(t, "", nil, filepath.Join(sroot, "usr/bin/edged"), "--version")
	if !strings.HasPrefix(v, "edged version ") {
		t.Errorf("installed edged --version: %q", v)
	}
	t.Logf("installed: %s", strings.TrimSpace(v))

	// The unit, pointed at the installed binary (systemd-analyze checks it exists).
	unitRaw, err := os.ReadFile(filepath.Join(sroot, "usr/lib/systemd/system/aegis-edged.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"ProtectSystem=strict", "StateDirectory=aegis-edge", "StateDirectoryMode=0700", "NoNewPrivileges=yes", "UMask=0077", "SystemCallFilter=@system-service",
		"User=aegis-edge", "Group=aegis-edge", "CapabilityBoundingSet="} {
		if !strings.Contains(string(unitRaw), "\n"+d+"\n") {
			t.Errorf("unit lacks %s", d)
		}
	}
	unit := filepath.Join(work, "aegis-edged.service")
	os.WriteFile(unit, bytes.ReplaceAll(unitRaw, []byte("/usr/bin/edged"), []byte(filepath.Join(sroot, "usr/bin/edged"))), 0o644)
	if out := run(t, "", nil, "systemd-analyze", "verify", "--man=no", unit); strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify printed:\n%s", out)
	}
	sec := run(t, "", nil, "systemd-analyze", "security", "--offline=true", "--no-pager", unit)
	t.Logf("systemd-analyze security --offline=true:\n%s", sec)
	m := regexp.MustCompile(`Overall exposure level for aegis-edged\.service: ([0-9.]+)`).FindStringSubmatch(sec)
	if m == nil {
		t.Fatal("no exposure level in the output")
	}
	if exposure, _ := strconv.ParseFloat(m[1], 64); exposure > 3.0 {
		t.Errorf("exposure %.1f, want at most 3.0", exposure)
	}

	// Remove keeps the state (a reinstall finds the host enrolled); purge keeps nothing.
	os.WriteFile(filepath.Join(state, "node.json"), []byte("{}\n"), 0o600)
	run(t, "", scriptEnv, filepath.Join(ctl, "prerm"), "remove")
	run(t, "", scriptEnv, filepath.Join(ctl, "postrm"), "remove")
	if _, err := os.Stat(filepath.Join(state, "node.json")); err != nil {
		t.Fatalf("remove deleted the state: %v", err)
	}
	run(t, "", scriptEnv, filepath.Join(ctl, "postrm"), "purge")
	for _, p := range []string{state, filepath.Join(sroot, "etc/aegis/edged.yaml")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived purge: %v", p, err)
		}
	}
}

// systemUser reads name's uid and primary gid from root's etc/passwd.
func systemUser(t *testing.T, root, name string) (uid, gid int) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil {
		t.Fatalf("no user database in the scratch root: %v", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Split(line, ":")
		if len(f) == 7 && f[0] == name {
			uid, _ = strconv.Atoi(f[2])
			gid, _ = strconv.Atoi(f[3])
			if f[6] != "/usr/sbin/nologin" && f[6] != "/sbin/nologin" {
				t.Errorf("%s has the shell %s, want nologin", name, f[6])
			}
			return uid, gid
		}
	}
	t.Fatalf("no user %s in %s/etc/passwd:\n%s", name, root, raw)
	return 0, 0
}

func assertOwner(t *testing.T, path string, uid, gid int) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s is %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, gid)
	}
}

// fallbackUser installs deb into a second scratch root and runs its postinst with a
// PATH that has useradd but no systemd-sysusers.
func fallbackUser(t *testing.T, deb, ctl string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	run(t, "", nil, "dpkg-deb", "-x", deb, root)
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"passwd", "group", "shadow", "gshadow"} {
		if err := os.WriteFile(filepath.Join(root, "etc", f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := t.TempDir()
	for _, tool := range []string{"sh", "awk", "grep", "mkdir", "chown", "chmod", "useradd"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skipf("no %s for the useradd fallback: %v", tool, err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(filepath.Join(bin, "sh"), filepath.Join(ctl, "postinst"), "configure")
	cmd.Env = []string{"PATH=" + bin, "DPKG_ROOT=" + root}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("postinst with useradd only: %v\n%s", err, out)
	}
	uid, gid := systemUser(t, root, "aegis-edge")
	if uid == 0 || gid == 0 {
		t.Fatalf("useradd made aegis-edge uid %d gid %d", uid, gid)
	}
	assertOwner(t, filepath.Join(root, "var/lib/aegis-edge"), uid, gid)
}
