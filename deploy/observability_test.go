package deploy

import (
	"context"

	"connectrpc.com/connect"
	"encoding/json"
	edgev1 "github.com/aegis-edge/aegis/api/gen/aegis/edge/v1"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/aegis-edge/aegis/controlplane/cptest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// TestPromtoolRules runs the rules' unit tests with the pinned promtool.
func TestPromtoolRules(t *testing.T) {
	t.Parallel()
	dir := repoRoot(t) + "/deploy/prometheus"
	if out, err := goTool(t, dir, "promtool", "check", "rules", "aegis-edge.rules.yaml"); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	out, err := goTool(t, dir, "promtool", "test", "rules", "aegis-edge.rules.test.yaml")
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(out))
}

// expressions returns every PromQL expression in the rules and the dashboard, keyed
// by where it is.
func expressions(t *testing.T) map[string]string {
	t.Helper()
	exprs := map[string]string{}
	raw, err := os.ReadFile("prometheus/aegis-edge.rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rg ruleGroups
	if err := yaml.UnmarshalStrict(raw, &rg); err != nil {
		t.Fatalf("rules: %v", err)
	}
	for _, g := range rg.Groups {
		for _, r := range g.Rules {
			exprs["rule "+r.Alert+r.Record] = r.Expr
		}
	}
	raw, err = os.ReadFile("grafana/aegis-edge-controlplane.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query string `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			exprs["panel "+p.Title+" #"+string(rune('A'+i))] = tg.Expr
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*[a-z_]+\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Query)
		if m == nil {
			t.Fatalf("dashboard variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, v.Query)
		}
		exprs["variable "+v.Name] = m[1]
	}
	return exprs
}

// grafanaVars stand in for the dashboard's variables so the expression parses as
// Prometheus will see it.
var grafanaVars = strings.NewReplacer(`"$namespace"`, `".*"`, `$__rate_interval`, `5m`)

// TestAlertsAndDashboardNameExportedMetrics parses every expression and checks that
// each metric it selects is exported by a real control plane's /metrics, so the
// rules and the dashboard cannot drift from the code.
func TestAlertsAndDashboardNameExportedMetrics(t *testing.T) {
	t.Parallel()
	srv := cptest.Start(t, cptest.Options{})
	// One operator call, so the per-procedure RPC family has a series.
	if _, err := srv.AdminClient().WhoAmI(context.Background(), connect.NewRequest(&edgev1.WhoAmIRequest{})); err != nil {
		t.Fatal(err)
	}
	resp, err := srv.HTTPClient().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	tp := expfmt.NewTextParser(model.UTF8Validation)
	families, err := tp.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	exported := map[string]bool{}
	for name, f := range families {
		exported[name] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				exported[name+s] = true
			}
		}
	}

	var used []string
	for where, e := range expressions(t) {
		expr, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(e))
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", where, e, err)
			continue
		}
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			name := vs.Name
			if name == "" {
				t.Errorf("%s: selects metrics without naming one: %s", where, vs)
				return nil
			}
			if !exported[name] {
				t.Errorf("%s: metric %s is not exported by the control plane", where, name)
			}
			used = append(used, name)
			return nil
		})
	}
	slices.Sort(used)
	used = slices.Compact(used)
	if len(used) < 10 {
		t.Fatalf("only %d metrics named in all the rules and panels: %v", len(used), used)
	}
	if !t.Failed() {
		t.Logf("%d metrics named by the rules and the dashboard, all exported: %v", len(used), used)
	}
}
