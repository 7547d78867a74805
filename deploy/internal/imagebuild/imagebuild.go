// Package imagebuild owns the control plane's container image: one layer holding the
// static controlplane binary, the CA bundle, a passwd/group naming the non-root user
// and an empty data directory it owns; no shell, no package manager, no libc. It is
// assembled from files with go-containerregistry, so `make image` needs no Docker
// daemon; deploy/Dockerfile builds the same shape for people who use Docker.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's fixed facts; the Helm chart and the tests rely on them.
const (
	// UID and GID of the "nonroot" user (the number distroless uses, so a
	// PodSecurityContext written for either image fits both).
	UID = 65532
	GID = 65532
	// BinaryPath is the controlplane binary inside the image.
	BinaryPath = "/usr/local/bin/controlplane"
	// DataDir is the default --data-dir, owned by UID with mode 0700.
	DataDir = "/var/lib/aegis"
	// CABundle is where the CA certificates go (Go's crypto/x509 looks there).
	CABundle = "/etc/ssl/certs/ca-certificates.crt"
)

// Options say what goes in.
type Options struct {
	// Binary is a static linux controlplane binary (CGO_ENABLED=0).
	Binary string
	// CABundle is a PEM file of CA certificates, e.g. the build machine's
	// /etc/ssl/certs/ca-certificates.crt.
	CABundle string
	// Arch is the GOARCH the binary was built for.
	Arch string
	// Version, Commit and GoVersion become OCI labels.
	Version, Commit, GoVersion string
	// Created is the image's creation time; the zero time (1970) keeps builds
	// reproducible.
	Created time.Time
}

// Build assembles the image.
func Build(o Options) (v1.Image, error) {
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("read the controlplane binary: %w", err)
	}
	ca, err := os.ReadFile(o.CABundle)
	if err != nil {
		return nil, fmt.Errorf("read the CA bundle (install ca-certificates, or pass its path): %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := o.Created
	dir := func(path string, uid int, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: path + "/", Mode: mode, Uid: uid, Gid: uid, ModTime: mtime})
	}
	file := func(path string, mode int64, body []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: mode, Size: int64(len(body)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", UID, GID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", GID)
	steps := []func() error{
		func() error { return dir("etc", 0, 0o755) },
		func() error { return file("etc/passwd", 0o644, []byte(passwd)) },
		func() error { return file("etc/group", 0o644, []byte(group)) },
		func() error { return dir("etc/ssl", 0, 0o755) },
		func() error { return dir("etc/ssl/certs", 0, 0o755) },
		func() error { return file(CABundle[1:], 0o644, ca) },
		func() error { return dir("home", 0, 0o755) },
		func() error { return dir("home/nonroot", UID, 0o700) },
		func() error { return dir("tmp", 0, 0o1777) },
		func() error { return dir("usr", 0, 0o755) },
		func() error { return dir("usr/local", 0, 0o755) },
		func() error { return dir("usr/local/bin", 0, 0o755) },
		func() error { return file(BinaryPath[1:], 0o755, bin) },
		func() error { return dir("var", 0, 0o755) },
		func() error { return dir("var/lib", 0, 0o755) },
		func() error { return dir(DataDir[1:], UID, 0o700) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.Arch
	cf.Created = v1.Time{Time: o.Created}
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", UID, GID),
		Entrypoint: []string{BinaryPath, "serve"},
		WorkingDir: DataDir,
		Env: []string{
			"PATH=/usr/local/bin",
			"SSL_CERT_FILE=" + CABundle,
			// In a container the API must be reachable from outside the pod, and the
			// root file system is read-only: only DataDir (a volume) is writable.
			"AEGIS_LISTEN=0.0.0.0:7443",
			"AEGIS_DATA_DIR=" + DataDir,
		},
		ExposedPorts: map[string]struct{}{"7443/tcp": {}, "9090/tcp": {}},
		Volumes:      map[string]struct{}{DataDir: {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "aegis-controlplane",
			"org.opencontainers.image.description": "Aegis Edge control plane",
			"org.opencontainers.image.version":     o.Version,
			"org.opencontainers.image.revision":    o.Commit,
			"org.opencontainers.image.source":      "https://github.com/aegis-edge/aegis",
			// Which Go security fixes the binary carries (see docs/deployment.md).
			"dev.aegis-edge.go-version": o.GoVersion,
		},
	}
	return mutate.ConfigFile(img, cf)
}

// WriteTarball writes img as a `docker load` / `podman load` tarball tagged ref.
func WriteTarball(path, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	return tarball.WriteToFile(path, tag, img)
}

// BuildBinary compiles a static controlplane for linux/arch and returns the Go version.
func BuildBinary(out, arch, version, commit string) (string, error) {
	pkg := "github.com/aegis-edge/aegis/api/buildinfo"
	cmd := exec.Command("go", "build", "-trimpath", "-o", out,
		"-ldflags", "-s -w -X "+pkg+".version="+version+" -X "+pkg+".commit="+commit,
		"github.com/aegis-edge/aegis/controlplane/cmd/controlplane")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build controlplane: %w", err)
	}
	v, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(v)), nil
}
