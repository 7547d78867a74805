package imagebuild

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestImage builds the real image into a tarball, reads it back as a registry client
// would, and checks what the chart and the issue rely on: a non-root user, the
// entrypoint, no shell, the data directory's owner and mode, a static binary that
// runs and reports the stamped version.
func TestImage(t *testing.T) {
	ca := "/etc/ssl/certs/ca-certificates.crt"
	if _, err := os.Stat(ca); err != nil {
		t.Fatalf("%s is needed to build the image (apt-get install ca-certificates; .ci/run does): %v", ca, err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "controlplane")
	goVersion, err := BuildBinary(bin, runtime.GOARCH, "v0.0.0-test", "c0ffee")
	if err != nil {
		t.Fatal(err)
	}
	img, err := Build(Options{Binary: bin, CABundle: ca, Arch: runtime.GOARCH, Version: "v0.0.0-test", Commit: "c0ffee", GoVersion: goVersion, Created: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "image.tar")
	if err := WriteTarball(path, "aegis-controlplane:test", img); err != nil {
		t.Fatal(err)
	}

	got, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (non-root)", cf.Config.User)
	}
	if strings.Join(cf.Config.Entrypoint, " ") != BinaryPath+" serve" {
		t.Errorf("entrypoint %q", cf.Config.Entrypoint)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	if cf.Config.Labels["dev.aegis-edge.go-version"] != goVersion || cf.Config.Labels["org.opencontainers.image.version"] != "v0.0.0-test" {
		t.Errorf("labels %v", cf.Config.Labels)
	}

	// Walk the flattened file system.
	rc := mutate.Extract(got)
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string]*tar.Header{}
	extracted := filepath.Join(dir, "extracted-controlplane")
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + strings.TrimSuffix(h.Name, "/")
		files[name] = h
		if name == BinaryPath {
			f, err := os.OpenFile(extracted, os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	for _, shell := range []string{"/bin/sh", "/bin/bash", "/bin/busybox", "/usr/bin/sh", "/bin"} {
		if _, ok := files[shell]; ok {
			t.Errorf("image contains %s: it must have no shell", shell)
		}
	}
	if h := files[BinaryPath]; h == nil || h.Mode&0o777 != 0o755 || h.Uid != 0 {
		t.Errorf("binary header %+v: want root-owned 0755 (the user cannot replace it)", h)
	}
	if h := files[DataDir]; h == nil || h.Uid != UID || h.Mode&0o777 != 0o700 {
		t.Errorf("data dir header %+v: want owner %d, mode 0700", h, UID)
	}
	if h := files[CABundle]; h == nil || h.Size == 0 {
		t.Errorf("no CA bundle at %s", CABundle)
	}
	if h := files["/etc/passwd"]; h == nil {
		t.Error("no /etc/passwd naming the user")
	}

	// Static: no program interpreter (the dynamic loader a scratch image lacks).
	ef, err := elf.Open(extracted)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked: it would not start in an image without libc")
		}
	}
	ef.Close()
	out, err := exec.Command(extracted, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("the image's binary --version: %v\n%s", err, out)
	}
	want := "controlplane version v0.0.0-test (commit c0ffee, " + goVersion
	if !strings.HasPrefix(string(out), want) {
		t.Fatalf("--version: %q, want prefix %q", out, want)
	}
	t.Logf("image's binary: %s", strings.TrimSpace(string(out)))
}
