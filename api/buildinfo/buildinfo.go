// Package buildinfo owns what a binary says about its own build: the release version,
// the source commit and the Go toolchain. Release builds stamp Version and Commit with
// -ldflags "-X"; a plain `go build` or `go install` falls back to what the toolchain
// recorded in the binary (debug.ReadBuildInfo), so every binary can answer --version
// and operators can tell which toolchain (and so which Go security fixes) it carries.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set at link time, e.g.
//
//	go build -ldflags "-X github.com/aegis-edge/aegis/api/buildinfo.version=v1.2.3 -X github.com/aegis-edge/aegis/api/buildinfo.commit=abc123"
var (
	version string
	commit  string
)

// Info describes one binary's build.
type Info struct {
	// Version is the release version (v1.2.3), the module version recorded by `go
	// install pkg@version`, or "dev" for a build from a work tree.
	Version string `json:"version"`
	// Commit is the source revision, with "-dirty" appended when the work tree had
	// uncommitted changes; "unknown" when neither ldflags nor VCS stamping recorded it.
	Commit string `json:"commit"`
	// GoVersion is the toolchain that built the binary, e.g. go1.26.7.
	GoVersion string `json:"go_version"`
}

// Get returns this binary's build information.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return resolve(version, commit, bi)
}

// resolve merges the ldflags values over what the toolchain recorded; ldflags win.
func resolve(ldVersion, ldCommit string, bi *debug.BuildInfo) Info {
	info := Info{Version: ldVersion, Commit: ldCommit, GoVersion: runtime.Version()}
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		if info.Version == "" {
			if v := bi.Main.Version; v != "" && v != "(devel)" {
				info.Version = v
			}
		}
		if info.Commit == "" {
			var rev string
			var dirty bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
			if rev != "" {
				info.Commit = rev
				if dirty {
					info.Commit += "-dirty"
				}
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// String is the one line `--version` prints: "NAME VERSION (commit C, GOVERSION)".
func (i Info) String() string { return i.Line("") }

// Line is String with the program's name in front.
func (i Info) Line(name string) string {
	s := fmt.Sprintf("%s (commit %s, %s %s/%s)", i.Version, i.Commit, i.GoVersion, runtime.GOOS, runtime.GOARCH)
	if name != "" {
		s = name + " " + s
	}
	return strings.TrimSpace(s)
}
