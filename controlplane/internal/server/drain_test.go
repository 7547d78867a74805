package server

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The restart a shutdown expects is this process's own start plus the drain: as
// the last shutdown measured it, per stream, or a default cost per stream until
// one has been measured; never past the cap.
func TestExpectedRestart(t *testing.T) {
	start := time.Second
	if got := expectedRestart(start, drainRecord{}, 10000); got != start+10000*defaultDrainPerStream {
		t.Errorf("no record: %v, want the start and %v per stream", got, defaultDrainPerStream)
	}
	last := drainRecord{Streams: 2000, Seconds: 4}
	if got := expectedRestart(start, last, 10000); got != 21*time.Second {
		t.Errorf("2ms a stream last time, 10,000 now: %v, want 1s + 20s", got)
	}
	if got := expectedRestart(start, last, 0); got != start {
		t.Errorf("no stream: %v, want the start alone", got)
	}
	if got := expectedRestart(start, drainRecord{Streams: 10, Seconds: 600}, 10000); got != maxExpectedRestart {
		t.Errorf("a runaway record: %v, want the cap %v", got, maxExpectedRestart)
	}
}

// The drain a shutdown measured is read back by the next start from the data dir;
// a missing or unreadable record reads as none.
func TestDrainRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if r := readDrainRecord(dir); r != (drainRecord{}) {
		t.Fatalf("nothing written: %+v", r)
	}
	if err := writeDrainRecord(dir, drainRecord{Streams: 10000, Seconds: 5.5}); err != nil {
		t.Fatal(err)
	}
	if r := readDrainRecord(dir); r != (drainRecord{Streams: 10000, Seconds: 5.5}) {
		t.Fatalf("read back %+v", r)
	}
	if err := os.WriteFile(filepath.Join(dir, drainRecordFile), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := readDrainRecord(dir); r != (drainRecord{}) {
		t.Fatalf("garbage read as %+v", r)
	}
}
