package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
)

// keepAlive is how often an idle event stream sends a comment, so proxies keep it.
const keepAlive = 15 * time.Second

func startEvents(w http.ResponseWriter) (http.Flusher, bool) {
	f, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return nil, false
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	f.Flush()
	return f, true
}

func writeEvent(w http.ResponseWriter, f http.Flusher, id, name string, data []byte) error {
	var b bytes.Buffer
	if id != "" {
		fmt.Fprintf(&b, "id: %s\n", id)
	}
	fmt.Fprintf(&b, "event: %s\ndata: %s\n\n", name, data)
	if _, err := w.Write(b.Bytes()); err != nil {
		return err
	}
	f.Flush()
	return nil
}

// hostEvents streams the hosts page the browser shows (same target, page and size)
// whenever it changes: event "hosts" with the whole page as JSON. It looks every
// PollInterval, through the API, so what it sends is what a reload would show.
func (c *Console) hostEvents(w http.ResponseWriter, r *http.Request, s *session) {
	target, page, size := hostQuery(r)
	f, ok := startEvents(w)
	if !ok {
		return
	}
	poll := time.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	idle := time.NewTicker(keepAlive)
	defer idle.Stop()
	var last []byte
	for {
		list, err := c.listHosts(r, s, target, page, size)
		if err != nil {
			// Signed out, revoked or a bad selector: tell the page and stop; the
			// browser would otherwise reconnect forever.
			msg, _ := json.Marshal(map[string]string{"error": err.Error()})
			_ = writeEvent(w, f, "", "failed", msg)
			return
		}
		if b, _ := json.Marshal(list); !bytes.Equal(b, last) {
			if writeEvent(w, f, "", "hosts", b) != nil {
				return
			}
			last = b
		}
		select {
		case <-r.Context().Done():
			return
		case <-c.closing.Done():
			return
		case <-idle.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
			f.Flush()
		case <-poll.C:
		}
		if c.sessions.lookup(r, c.cfg.Now()) == nil {
			_ = writeEvent(w, f, "", "failed", []byte(`{"error":"signed out"}`))
			return
		}
	}
}

// runEvents follows a fleet run through WatchFleetRun: event "line" per line of the
// guide's output, then "done" after the summary. A reconnecting browser sends
// Last-Event-ID and gets only what followed.
func (c *Console) runEvents(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("run")
	after, _ := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64)
	run, err := c.api.GetFleetRun(r.Context(), bearer(s, &edgev1.GetFleetRunRequest{RunId: id}))
	if err != nil {
		c.apiError(w, r, s, err)
		return
	}
	action := run.Msg.GetRun().GetSpec().GetAction()
	ctx := r.Context()
	stream, err := c.api.WatchFleetRun(ctx, bearer(s, &edgev1.WatchFleetRunRequest{RunId: id, AfterSequence: after}))
	if err != nil {
		c.apiError(w, r, s, err)
		return
	}
	defer stream.Close()
	f, ok := startEvents(w)
	if !ok {
		return
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// The API stream ends with the run; end it early when the server closes.
		select {
		case <-c.closing.Done():
			_ = stream.Close()
		case <-stop:
		}
	}()
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		for _, l := range lines(ev, action) {
			b, _ := json.Marshal(l)
			if writeEvent(w, f, strconv.FormatUint(ev.GetSequence(), 10), "line", b) != nil {
				return
			}
		}
		if _, done := ev.GetEvent().(*edgev1.FleetEvent_RunFinished); done {
			_ = writeEvent(w, f, strconv.FormatUint(ev.GetSequence(), 10), "done", []byte(`{}`))
			return
		}
	}
	if err := stream.Err(); err != nil && ctx.Err() == nil {
		msg, _ := json.Marshal(map[string]string{"error": err.Error()})
		_ = writeEvent(w, f, "", "failed", msg)
	}
}
