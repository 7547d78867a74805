package server

import (
	"github.com/aegis-edge/aegis/api/buildinfo"
	"github.com/prometheus/client_golang/prometheus"
)

// registerBuildInfo exports aegis_build_info, the constant 1 labelled with what
// --version prints, so dashboards and alerts can tell replicas of different builds apart
// (a half-finished upgrade, a toolchain with a known vulnerability).
func registerBuildInfo(reg prometheus.Registerer) {
	info := buildinfo.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "aegis_build_info",
		Help:        "Build of this control plane: always 1, labelled with version, commit and Go toolchain.",
		ConstLabels: prometheus.Labels{"version": info.Version, "commit": info.Commit, "goversion": info.GoVersion},
	})
	g.Set(1)
	reg.MustRegister(g)
}
