// Command build-image builds the control plane's container image into a tarball
// without a Docker daemon (`make image`). It compiles controlplane as a static linux
// binary stamped with the version, then assembles the image with imagebuild.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/aegis-edge/aegis/deploy/internal/imagebuild"
)

func main() {
	out := flag.String("o", "dist/aegis-controlplane-image.tar", "output `FILE` (a tarball for docker/podman load or crane push)")
	ref := flag.String("tag", "", "image `REF` recorded in the tarball (default aegis-controlplane:VERSION)")
	arch := flag.String("arch", runtime.GOARCH, "`GOARCH` to build for")
	version := flag.String("version", "", "release `VERSION` (default: git describe)")
	ca := flag.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "PEM `FILE` of CA certificates to include")
	flag.Parse()
	if err := run(*out, *ref, *arch, *version, *ca); err != nil {
		fmt.Fprintf(os.Stderr, "build-image: %v\n", err)
		os.Exit(1)
	}
}

func git(args ...string) string {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func run(out, ref, arch, version, ca string) error {
	if version == "" {
		version = git("describe", "--tags", "--always", "--dirty")
	}
	if version == "" {
		version = "dev"
	}
	commit := git("rev-parse", "HEAD")
	if commit == "" {
		commit = "unknown"
	}
	if ref == "" {
		ref = "aegis-controlplane:" + strings.NewReplacer("+", "-", "/", "-").Replace(version)
	}
	tmp, err := os.MkdirTemp("", "aegis-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "controlplane")
	goVersion, err := imagebuild.BuildBinary(bin, arch, version, commit)
	if err != nil {
		return err
	}
	img, err := imagebuild.Build(imagebuild.Options{Binary: bin, CABundle: ca, Arch: arch,
		Version: version, Commit: commit, GoVersion: goVersion, Created: time.Unix(0, 0).UTC()})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := imagebuild.WriteTarball(out, ref, img); err != nil {
		return err
	}
	d, _ := img.Digest()
	fmt.Printf("wrote %s: %s (%s, linux/%s, %s)\n", out, ref, d, arch, goVersion)
	return nil
}
