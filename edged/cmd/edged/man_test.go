package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
)

var updateMan = flag.Bool("update", false, "rewrite docs/man/edged.1")

// docs/man/edged.1 (shipped by the packages) is rendered from the command definitions;
// this fails when it is out of date.
func TestManPage(t *testing.T) {
	man, err := newApp(io.Discard, io.Discard).ToMan()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "..", "..", "docs", "man", "edged.1")
	if *updateMan {
		if err := os.WriteFile(path, []byte(man), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != man {
		t.Fatalf("%s is out of date (or missing: %v): run `make docs` and commit it", path, err)
	}
}
