package cli

import (
	"io"
	"os"
	"strings"
)

// useColour: colour only on a terminal, never when NO_COLOR is set (https://no-color.org)
// or TERM is dumb, so pipes, files and scripts get plain text.
func (a *app) useColour(w io.Writer) bool {
	if a.env.Getenv("NO_COLOR") != "" || a.env.Getenv("TERM") == "dumb" {
		return false
	}
	if a.env.IsTerminal != nil {
		return a.env.IsTerminal(w)
	}
	return isTerminal(w)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

const (
	ansiGreen = "\x1b[32m"
	ansiRed   = "\x1b[31m"
	ansiDim   = "\x1b[2m"
	ansiReset = "\x1b[0m"
)

// paintHostLine colours a fleet host line's mark: ✔ green, ✖ red, - dim.
func paintHostLine(l string) string {
	for mark, c := range map[string]string{"] ✔ ": ansiGreen, "] ✖ ": ansiRed, "] - ": ansiDim} {
		if i := strings.Index(l, mark); i >= 0 {
			return l[:i+2] + c + l[i+2:] + ansiReset
		}
	}
	return l
}
