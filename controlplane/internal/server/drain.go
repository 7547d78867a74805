package server

import (
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"github.com/aegis-edge/aegis/api/atomicfile"
)

// A restart's hints (rpc.Cluster.ShutdownHints) begin when the next process is
// expected to serve: after this one's drain (every stream told to go and closed,
// the HTTP server stopped, the store flushed and closed) and the next one's start.
// The start is measured by this process itself (startTook); the drain, which grows
// with the number of streams, is measured by each graceful shutdown and written to
// the data dir for the next process to use, per stream.

// drainRecordFile (in the data dir) holds the last graceful shutdown's drain.
const drainRecordFile = "last-drain.json"

// defaultDrainPerStream is the drain's cost per stream until a shutdown has measured
// it: about what the development machine (2 shared cores, SQLite) measured at
// 10,000 streams.
const defaultDrainPerStream = 500 * time.Microsecond

// maxExpectedRestart caps the expectation, so that a drain measured on a stalled
// machine does not park the fleet for long after the next one.
const maxExpectedRestart = time.Minute

// drainRecord is one graceful shutdown's drain: how many streams it closed, and
// how long from SIGTERM to the store closed.
type drainRecord struct {
	Streams int     `json:"streams"`
	Seconds float64 `json:"seconds"`
}

// expectedRestart is how long after the start of a shutdown with streams streams
// the next process is expected to serve.
func expectedRestart(start time.Duration, last drainRecord, streams int) time.Duration {
	per := defaultDrainPerStream
	if last.Streams > 0 && last.Seconds > 0 {
		per = time.Duration(last.Seconds / float64(last.Streams) * float64(time.Second))
	}
	return min(start+time.Duration(streams)*per, maxExpectedRestart)
}

// readDrainRecord reads the last shutdown's drain from dir; none (the zero record)
// if there is no readable one.
func readDrainRecord(dir string) drainRecord {
	var r drainRecord
	b, err := os.ReadFile(filepath.Join(dir, drainRecordFile))
	if err != nil || json.Unmarshal(b, &r) != nil || r.Streams < 0 || r.Seconds < 0 {
		return drainRecord{}
	}
	return r
}

// writeDrainRecord replaces dir's record atomically (replicas may share a dir).
func writeDrainRecord(dir string, r drainRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, drainRecordFile), b, 0o600)
}
