// Package deploy holds no code of its own: its tests check what deploy/ ships (the Helm
// chart, the alert rules, the dashboard) against the real tools and the real binaries,
// and that the vulnerability check of scripts/test.sh fails when it should.
package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const chart = "helm/aegis-controlplane"

// repoRoot is where `go tool` finds the pinned tools (tools/go.mod via go.work).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func goTool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"tool"}, args...)...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return goTool(t, repoRoot(t), append([]string{"helm"}, args...)...)
}

func chartPath(t *testing.T) string { return filepath.Join(repoRoot(t), "deploy", chart) }

var controlplaneBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "aegis-deploy-test-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "controlplane")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/aegis-edge/aegis/controlplane/cmd/controlplane").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build controlplane: %v\n%s", err, out)
	}
	return bin, nil
})

// The rendered objects, strictly decoded: a field the API type does not have fails.
type rendered struct {
	deployments []appsv1.Deployment
	services    []corev1.Service
	pvcs        []corev1.PersistentVolumeClaim
	secrets     []corev1.Secret
	jobs        []batchv1.Job
	pdbs        []policyv1.PodDisruptionBudget
	netpols     []networkingv1.NetworkPolicy
	// Custom resources, decoded into the fields this chart uses (see crds.go).
	serviceMonitors []serviceMonitor
	rules           []prometheusRule
	certificates    []certificate
}

func strictInto[T any](t *testing.T, doc []byte, list *[]T) {
	t.Helper()
	var v T
	if err := yaml.UnmarshalStrict(doc, &v); err != nil {
		t.Fatalf("strict decode: %v\n%s", err, doc)
	}
	*list = append(*list, v)
}

func render(t *testing.T, args ...string) rendered {
	t.Helper()
	out, err := helm(t, append([]string{"template", "aegis", chartPath(t), "--namespace", "aegis"}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	var r rendered
	for _, doc := range strings.Split(out, "\n---") {
		doc = strings.TrimSpace(doc)
		if doc == "" || strings.Trim(doc, "# \n") == "" {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if head.Kind == "" {
			continue // a document holding only a "# Source:" comment
		}
		b := []byte(doc)
		switch head.APIVersion + "/" + head.Kind {
		case "apps/v1/Deployment":
			strictInto(t, b, &r.deployments)
		case "v1/Service":
			strictInto(t, b, &r.services)
		case "v1/PersistentVolumeClaim":
			strictInto(t, b, &r.pvcs)
		case "v1/Secret":
			strictInto(t, b, &r.secrets)
		case "batch/v1/Job":
			strictInto(t, b, &r.jobs)
		case "policy/v1/PodDisruptionBudget":
			strictInto(t, b, &r.pdbs)
		case "networking.k8s.io/v1/NetworkPolicy":
			strictInto(t, b, &r.netpols)
		case "monitoring.coreos.com/v1/ServiceMonitor":
			strictInto(t, b, &r.serviceMonitors)
		case "monitoring.coreos.com/v1/PrometheusRule":
			strictInto(t, b, &r.rules)
		case "cert-manager.io/v1/Certificate":
			strictInto(t, b, &r.certificates)
		default:
			t.Fatalf("rendered an object this test does not know how to check: %s %s", head.APIVersion, head.Kind)
		}
	}
	return r
}

const advertise = "advertiseURL=https://aegis.example.com:7443"

func TestHelmLint(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--set", advertise},
		{"-f", filepath.Join(chartPath(t), "ci", "production-values.yaml")},
	} {
		if out, err := helm(t, append([]string{"lint", "--strict", chartPath(t)}, args...)...); err != nil {
			t.Fatalf("helm lint %v: %v\n%s", args, err, out)
		}
	}
}

// Values the schema or the templates refuse, each with a message naming the fix.
func TestHelmRefusesBadValues(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "advertiseURL is required"},
		{[]string{"--set", "advertiseURL=http://plain.example.com"}, "advertiseURL"},
		{[]string{"--set", advertise, "--set", "database.kind=mysql"}, "/database/kind"},
		{[]string{"--set", advertise, "--set", "database.kind=postgres"}, "database.existingSecret is required"},
		{[]string{"--set", advertise, "--set", "tls.mode=secret"}, "tls.secretName is required"},
		{[]string{"--set", advertise, "--set", "replicas=3"}, "replicas"},
	} {
		out, err := helm(t, append([]string{"template", "aegis", chartPath(t)}, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("helm template %v: err=%v, want an error mentioning %q; got:\n%s", c.args, err, c.want, out)
		}
	}
}

func checkRestricted(t *testing.T, where string, pod corev1.PodSpec) {
	t.Helper()
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot ||
		pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod security context not restricted: %+v", where, pod.SecurityContext)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: mounts a service account token it never uses", where)
	}
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s/%s: no security context", where, c.Name)
		case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
			t.Errorf("%s/%s: runAsNonRoot not set", where, c.Name)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s/%s: root file system writable", where, c.Name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s/%s: privilege escalation allowed", where, c.Name)
		case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0:
			t.Errorf("%s/%s: capabilities not all dropped: %+v", where, c.Name, sc.Capabilities)
		case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
			t.Errorf("%s/%s: seccomp not RuntimeDefault", where, c.Name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s/%s: resources unset: %+v", where, c.Name, c.Resources)
		}
	}
}

func TestHelmDefaultsSQLite(t *testing.T) {
	t.Parallel()
	r := render(t, "--set", advertise)
	if len(r.deployments) != 1 || len(r.pvcs) != 1 || len(r.jobs) != 0 || len(r.pdbs) != 0 {
		t.Fatalf("sqlite install: %d deployments, %d PVCs, %d jobs, %d PDBs; want 1, 1, 0, 0",
			len(r.deployments), len(r.pvcs), len(r.jobs), len(r.pdbs))
	}
	d := r.deployments[0]
	if *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("sqlite: replicas %d strategy %s; want 1 and Recreate (one writer on the volume)", *d.Spec.Replicas, d.Spec.Strategy.Type)
	}
	pod := d.Spec.Template.Spec
	checkRestricted(t, "deployment", pod)
	var claim string
	for _, v := range pod.Volumes {
		if v.Name == "data" && v.PersistentVolumeClaim != nil {
			claim = v.PersistentVolumeClaim.ClaimName
		}
	}
	if claim != r.pvcs[0].Name {
		t.Errorf("data volume claims %q, the chart creates %q", claim, r.pvcs[0].Name)
	}
	c := pod.Containers[0]
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		c.ReadinessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS {
		t.Errorf("probes: readiness %+v liveness %+v", c.ReadinessProbe.HTTPGet, c.LivenessProbe.HTTPGet)
	}
	if len(r.netpols) != 1 || pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil {
		t.Errorf("network policy %d, anti-affinity %+v", len(r.netpols), pod.Affinity)
	}
	checkArgsAccepted(t, r, d, nil)
}

func TestHelmProductionPostgres(t *testing.T) {
	t.Parallel()
	r := render(t, "-f", filepath.Join(chartPath(t), "ci", "production-values.yaml"))
	if len(r.deployments) != 1 || len(r.pvcs) != 0 || len(r.jobs) != 1 || len(r.pdbs) != 1 ||
		len(r.serviceMonitors) != 1 || len(r.rules) != 1 || len(r.certificates) != 1 {
		t.Fatalf("production install: %d deployments %d PVCs %d jobs %d PDBs %d ServiceMonitors %d PrometheusRules %d Certificates",
			len(r.deployments), len(r.pvcs), len(r.jobs), len(r.pdbs), len(r.serviceMonitors), len(r.rules), len(r.certificates))
	}
	d := r.deployments[0]
	if *d.Spec.Replicas != 3 {
		t.Errorf("replicas %d, want 3", *d.Spec.Replicas)
	}
	checkRestricted(t, "deployment", d.Spec.Template.Spec)
	job := r.jobs[0]
	checkRestricted(t, "migrate job", job.Spec.Template.Spec)
	if hook := job.Annotations["helm.sh/hook"]; hook != "pre-install,pre-upgrade" {
		t.Errorf("migrate job hook %q", hook)
	}
	if got := strings.Join(append(job.Spec.Template.Spec.Containers[0].Command, job.Spec.Template.Spec.Containers[0].Args...), " "); got != "/usr/local/bin/controlplane migrate up" {
		t.Errorf("migrate job runs %q", got)
	}
	sm := r.serviceMonitors[0]
	if sm.Spec.Endpoints[0].Scheme != "http" || sm.Spec.Endpoints[0].Port != "metrics" {
		t.Errorf("service monitor endpoint %+v: want plain http on the metrics port", sm.Spec.Endpoints[0])
	}
	if len(r.rules[0].Spec.Groups) == 0 || len(r.rules[0].Spec.Groups[0].Rules) == 0 {
		t.Error("PrometheusRule holds no rules")
	}
	if r.certificates[0].Spec.SecretName == "" || r.certificates[0].Spec.IssuerRef.Name != "letsencrypt" {
		t.Errorf("certificate %+v", r.certificates[0].Spec)
	}
	// The Secrets a production install is given (TLS by cert-manager, the bootstrap
	// token, the database URL) come from a defaults render, which generates real ones.
	def := render(t, "--set", advertise)
	checkArgsAccepted(t, def, d, map[string]string{"AEGIS_DATABASE_URL": "postgres://aegis@db.invalid:5432/aegis?sslmode=verify-full"})
	// The migrate Job's command exists in the real binary.
	bin, err := controlplaneBin()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "migrate", "up", "--help").CombinedOutput(); err != nil {
		t.Fatalf("controlplane migrate up --help: %v\n%s", err, out)
	}
}

// checkArgsAccepted runs the real controlplane with the Deployment's arguments and
// environment under `serve --check-config`. The pod's mounts are laid out under a
// scratch directory (their paths rewritten), filled from the Secrets in secrets.
func checkArgsAccepted(t *testing.T, secrets rendered, d appsv1.Deployment, env map[string]string) {
	t.Helper()
	bin, err := controlplaneBin()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	c := d.Spec.Template.Spec.Containers[0]
	byName := map[string]corev1.Secret{}
	for _, s := range secrets.secrets {
		byName[s.Name] = s
	}
	vols := map[string]corev1.Volume{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(root, m.MountPath)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		v := vols[m.Name]
		if v.Secret == nil {
			continue
		}
		// A Secret the operator provides in production: take the generated one of the
		// same kind (tls or bootstrap) from the defaults render.
		sec, ok := byName[v.Secret.SecretName]
		if !ok {
			for name, s := range byName {
				if strings.HasSuffix(name, "-"+m.Name) {
					sec, ok = s, true
				}
			}
		}
		if !ok {
			t.Fatalf("no Secret to fill the %s mount", m.Name)
		}
		for k, v := range sec.Data {
			if err := os.WriteFile(filepath.Join(dir, k), v, 0o400); err != nil {
				t.Fatal(err)
			}
		}
	}
	var args []string
	for _, a := range c.Args {
		for _, p := range []string{"/etc/aegis/", "/var/lib/aegis"} {
			a = strings.ReplaceAll(a, "="+p, "="+root+p)
		}
		args = append(args, a)
	}
	cmd := exec.Command(bin, append(append([]string{"serve"}, args...), "--check-config")...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			v, ok := env[e.Name]
			if !ok {
				t.Fatalf("env %s comes from a Secret the test has no value for", e.Name)
			}
			cmd.Env = append(cmd.Env, e.Name+"="+v)
			continue
		}
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "configuration ok") {
		t.Fatalf("controlplane serve %s --check-config: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("the Deployment's arguments are accepted: %s", strings.TrimSpace(string(out)))
}

// The generated bootstrap token is a valid admin API token ("<16 hex>.<32 hex>") and
// the generated TLS chain ends with the CA that ca.crt holds.
func TestHelmGeneratedSecrets(t *testing.T) {
	t.Parallel()
	r := render(t, "--set", advertise)
	var tok, chain, ca []byte
	for _, s := range r.secrets {
		if v, ok := s.Data["token"]; ok {
			tok = v
		}
		if v, ok := s.Data["tls.crt"]; ok {
			chain, ca = v, s.Data["ca.crt"]
		}
	}
	id, secret, ok := strings.Cut(string(tok), ".")
	if !ok || len(id) != 16 || len(secret) != 32 || strings.Trim(id+secret, "0123456789abcdef") != "" {
		t.Errorf("bootstrap token %d bytes is not <16 hex>.<32 hex>", len(tok))
	}
	if len(ca) == 0 || !bytes.HasSuffix(bytes.TrimSpace(chain), bytes.TrimSpace(ca)) {
		t.Error("tls.crt does not end with ca.crt: enrollment tokens pin the chain's last certificate")
	}
}

// The chart's PrometheusRule ships the same rules as deploy/prometheus.
func TestChartRulesAreTheTestedRules(t *testing.T) {
	t.Parallel()
	a, err := os.ReadFile("prometheus/aegis-edge.rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(chart, "files", "aegis-edge.rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("%s/files/aegis-edge.rules.yaml differs from prometheus/aegis-edge.rules.yaml: cp the latter over the former", chart)
	}
}
