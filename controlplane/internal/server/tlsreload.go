package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/aegis-edge/aegis/controlplane/internal/tlsca"
)

// certCheckEvery bounds how often a handshake looks at the certificate files: a
// Kubernetes Secret or cert-manager renewal is picked up within this long, and a
// busy server stats two files at most this often.
const certCheckEvery = time.Second

// certReloader serves the --tls-cert/--tls-key pair and reloads it when either file
// changes on disk (a Secret update swaps the files under the mount), so a renewed
// certificate needs no restart. A pair that fails to load (half-written, mismatched)
// is logged and the previous one kept: a renewal can never take the server down.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string
	checkedAt time.Time
}

func newCertReloader(certFile, keyFile string, first tls.Certificate, log *slog.Logger) *certReloader {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log, now: time.Now, cert: &first}
	r.stamp, _ = r.fileStamp()
	r.checkedAt = r.now()
	return r
}

// fileStamp identifies the current contents of both files by size and mtime.
func (r *certReloader) fileStamp() (string, error) {
	var s string
	for _, p := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		s += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return s, nil
}

// GetCertificate is tls.Config.GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.checkedAt) >= certCheckEvery {
		r.checkedAt = now
		r.reloadLocked()
	}
	return r.cert, nil
}

// reload checks the files now, whatever the time since the last check.
func (r *certReloader) reload() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reloadLocked()
}

func (r *certReloader) reloadLocked() {
	stamp, err := r.fileStamp()
	if err != nil {
		r.log.Warn("tls: cannot read the certificate files; still serving the loaded certificate", "err", err)
		return
	}
	if stamp == r.stamp {
		return
	}
	b, err := tlsca.Load(r.certFile, r.keyFile)
	if err != nil {
		// Often a renewal caught between writing the two files: the next check
		// retries, since the stamp is left unchanged.
		r.log.Warn("tls: the certificate files changed but do not load; still serving the previous certificate", "err", err)
		return
	}
	r.cert, r.stamp = &b.Certificate, stamp
	r.log.Info("tls: reloaded the server certificate", "cert", r.certFile, "not_after", b.Certificate.Leaf.NotAfter.UTC().Format(time.RFC3339))
}
