package server

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// listenMetrics opens the --metrics-listen port: plain HTTP serving only /metrics,
// so a Prometheus ServiceMonitor scrapes without the control plane's CA and the API
// port stays TLS-only. Metrics carry no secrets and no per-host labels.
func (s *Server) listenMetrics(h http.Handler) error {
	ln, err := net.Listen("tcp", s.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("listen on --metrics-listen %s: %w", s.cfg.MetricsListen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	s.metricsLn = ln
	s.metricsHTTP = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return nil
}

// MetricsAddr is the --metrics-listen address being served, nil without one.
func (s *Server) MetricsAddr() net.Addr {
	if s.metricsLn == nil {
		return nil
	}
	return s.metricsLn.Addr()
}
