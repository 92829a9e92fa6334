package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// rendered is the output of one kustomization, decoded strictly into the
// Kubernetes API types (an unknown or misspelt field fails the decode).
type rendered struct {
	deployments  map[string]*appsv1.Deployment
	services     map[string]*corev1.Service
	pdbs         map[string]*policyv1.PodDisruptionBudget
	configMaps   map[string]*corev1.ConfigMap
	jobs         map[string]*batchv1.Job
	namespaces   map[string]*corev1.Namespace
	scaledObject map[string]*scaledObject
}

// scaledObject is the part of KEDA's keda.sh/v1alpha1 ScaledObject these
// manifests use; decoding is strict, so any other field is an error here.
type scaledObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace,omitempty"`
		Labels    map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion,omitempty"`
			Kind       string `json:"kind,omitempty"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		PollingInterval *int32 `json:"pollingInterval,omitempty"`
		CooldownPeriod  *int32 `json:"cooldownPeriod,omitempty"`
		MinReplicaCount *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount *int32 `json:"maxReplicaCount,omitempty"`
		Triggers        []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

func render(t *testing.T, dir string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out := &rendered{
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, configMaps: map[string]*corev1.ConfigMap{},
		jobs: map[string]*batchv1.Job{}, namespaces: map[string]*corev1.Namespace{}, scaledObject: map[string]*scaledObject{},
	}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		gvk := r.GetGvk()
		id := fmt.Sprintf("%s/%s %s", gvk.Group, gvk.Kind, r.GetName())
		var obj any
		switch gv := gvk.ApiVersion() + " " + gvk.Kind; gv {
		case "apps/v1 Deployment":
			d := &appsv1.Deployment{}
			out.deployments[r.GetName()], obj = d, d
		case "v1 Service":
			s := &corev1.Service{}
			out.services[r.GetName()], obj = s, s
		case "policy/v1 PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			out.pdbs[r.GetName()], obj = p, p
		case "v1 ConfigMap":
			c := &corev1.ConfigMap{}
			out.configMaps[r.GetName()], obj = c, c
		case "batch/v1 Job":
			j := &batchv1.Job{}
			out.jobs[r.GetName()], obj = j, j
		case "v1 Namespace":
			n := &corev1.Namespace{}
			out.namespaces[r.GetName()], obj = n, n
		case "keda.sh/v1alpha1 ScaledObject":
			s := &scaledObject{}
			out.scaledObject[r.GetName()], obj = s, s
		default:
			t.Errorf("%s: %s: kind not expected in these manifests (add it to the test with its API type)", dir, gv)
			continue
		}
		if err := yaml.UnmarshalStrict(y, obj); err != nil {
			t.Errorf("%s: %s does not decode strictly into its API type: %v", dir, id, err)
		}
	}
	return out
}

// components are the long-running callpipe roles and the ops port each serves
// /healthz, /readyz and /metrics on (the listen keys in the config).
var components = map[string]struct {
	args    []string
	port    int32
	service bool
}{
	"collect":           {[]string{"collect"}, 8081, true},
	"proxy":             {[]string{"proxy"}, 8080, true},
	"worker-normalize":  {[]string{"worker", "--stages", "normalize"}, 8082, false},
	"worker-clickhouse": {[]string{"worker", "--stages", "clickhouse"}, 8082, false},
	"worker-langfuse":   {[]string{"worker", "--stages", "langfuse"}, 8082, false},
	"worker-archive":    {[]string{"worker", "--stages", "archive"}, 8082, false},
	"serve":             {[]string{"serve"}, 8090, true},
}

const (
	configArgs = "--config /etc/callpipe/callpipe.yaml"
	secretName = "callpipe-secrets"
)

func TestKustomizeBase(t *testing.T) {
	r := render(t, "kubernetes/base")
	checkManifests(t, r, "ghcr.io/callpipe/callpipe:latest")
	if len(r.namespaces) != 0 {
		t.Errorf("the base must not create namespaces, has %v", keys(r.namespaces))
	}
	so := r.scaledObject["callpipe-worker-normalize"]
	if so == nil || *so.Spec.MaxReplicaCount != 20 {
		t.Errorf("base normalize ScaledObject: %+v", so)
	}
}

func TestKustomizeExampleOverlay(t *testing.T) {
	r := render(t, "kubernetes/overlays/example")
	checkManifests(t, r, "registry.example.com/platform/callpipe:v0.1.0")
	if _, ok := r.namespaces["callpipe"]; !ok {
		t.Error("overlay: namespace callpipe missing")
	}
	for name, d := range r.deployments {
		if d.Namespace != "callpipe" {
			t.Errorf("overlay: deployment %s in namespace %q", name, d.Namespace)
		}
	}
	if d := r.deployments["callpipe-collect"]; d == nil || d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("overlay: collect replicas patch not applied")
	}
	if d := r.deployments["callpipe-proxy"]; d == nil || d.Spec.Template.Spec.Containers[0].Resources.Limits.Memory().String() != "3Gi" {
		t.Errorf("overlay: proxy resources patch not applied")
	}
	if so := r.scaledObject["callpipe-worker-normalize"]; so == nil || *so.Spec.MaxReplicaCount != 40 {
		t.Errorf("overlay: ScaledObject maxReplicaCount patch not applied: %+v", so)
	}
	cfg := configText(t, r)
	for _, want := range []string{"replicas: 3", "cluster: callpipe"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("overlay config lacks %q", want)
		}
	}
}

func checkManifests(t *testing.T, r *rendered, image string) {
	t.Helper()
	if len(r.configMaps) != 1 {
		t.Fatalf("want exactly one ConfigMap (callpipe-config-<hash>), got %v", keys(r.configMaps))
	}
	var cmName string
	for n := range r.configMaps {
		cmName = n
	}
	if !strings.HasPrefix(cmName, "callpipe-config-") {
		t.Errorf("ConfigMap %s: want the generated callpipe-config-<hash> (rolls pods on config changes)", cmName)
	}

	for comp, want := range components {
		name := "callpipe-" + comp
		d := r.deployments[name]
		if d == nil {
			t.Errorf("deployment %s missing", name)
			continue
		}
		ps := d.Spec.Template.Spec
		if d.Spec.Selector == nil || !subset(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
			t.Errorf("%s: selector %v does not select its pods %v", name, d.Spec.Selector, d.Spec.Template.Labels)
		}
		if ps.SecurityContext == nil || ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: pod must run as non-root", name)
		}
		if ps.TerminationGracePeriodSeconds == nil || *ps.TerminationGracePeriodSeconds < 30 {
			t.Errorf("%s: terminationGracePeriodSeconds must leave time for a graceful stop", name)
		}
		if len(ps.Containers) != 1 {
			t.Fatalf("%s: want one container", name)
		}
		c := ps.Containers[0]
		if c.Image != image {
			t.Errorf("%s: image %q, want %q", name, c.Image, image)
		}
		if got, wantArgs := strings.Join(c.Args, " "), configArgs+" "+strings.Join(want.args, " "); got != wantArgs {
			t.Errorf("%s: args %q, want %q", name, got, wantArgs)
		}
		if len(c.Ports) != 1 || c.Ports[0].ContainerPort != want.port {
			t.Errorf("%s: ports %+v, want %d (its listen address in the config)", name, c.Ports, want.port)
		}
		checkProbe(t, name, "readiness", c.ReadinessProbe, "/readyz", c.Ports)
		checkProbe(t, name, "liveness", c.LivenessProbe, "/healthz", c.Ports)
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: needs cpu and memory requests and a memory limit, has %+v", name, c.Resources)
		}
		if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem ||
			c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation {
			t.Errorf("%s: container must have a read-only root filesystem and no privilege escalation", name)
		}
		checkSecretsAreReferences(t, name, c)
		checkConfigMount(t, name, ps, c, cmName)

		pdb := r.pdbs[name]
		if pdb == nil {
			t.Errorf("%s: PodDisruptionBudget missing", name)
		} else if pdb.Spec.Selector == nil || !subset(pdb.Spec.Selector.MatchLabels, d.Spec.Template.Labels) ||
			(pdb.Spec.MinAvailable == nil) == (pdb.Spec.MaxUnavailable == nil) {
			t.Errorf("%s: PDB must select the deployment's pods and set exactly one of minAvailable/maxUnavailable: %+v", name, pdb.Spec)
		}
		if want.service {
			s := r.services[name]
			if s == nil {
				t.Errorf("%s: Service missing", name)
			} else if !subset(s.Spec.Selector, d.Spec.Template.Labels) || len(s.Spec.Ports) != 1 ||
				s.Spec.Ports[0].Port != want.port || s.Spec.Ports[0].TargetPort.StrVal != c.Ports[0].Name {
				t.Errorf("%s: Service must select its pods and forward port %d to %q: %+v", name, want.port, c.Ports[0].Name, s.Spec)
			}
		}
	}
	for name := range r.deployments {
		if _, ok := components[strings.TrimPrefix(name, "callpipe-")]; !ok {
			t.Errorf("deployment %s is not checked by this test", name)
		}
	}

	job := r.jobs["callpipe-migrate"]
	if job == nil {
		t.Fatal("Job callpipe-migrate missing")
	}
	jc := job.Spec.Template.Spec.Containers
	if len(jc) != 1 || strings.Join(jc[0].Args, " ") != configArgs+" migrate" || jc[0].Image != image {
		t.Errorf("migrate job container: %+v", jc)
	} else {
		checkSecretsAreReferences(t, "job callpipe-migrate", jc[0])
		checkConfigMount(t, "job callpipe-migrate", job.Spec.Template.Spec, jc[0], cmName)
	}
	if rp := job.Spec.Template.Spec.RestartPolicy; rp != corev1.RestartPolicyOnFailure && rp != corev1.RestartPolicyNever {
		t.Errorf("migrate job restartPolicy %q", rp)
	}
	if job.Spec.TTLSecondsAfterFinished == nil {
		t.Error("migrate job needs ttlSecondsAfterFinished so that the next release's apply creates it again")
	}

	checkScaledObject(t, r, "worker-normalize", "CALLPIPE_CALLS", "callpipe-normalize")
	checkScaledObject(t, r, "worker-langfuse", "CALLPIPE_NORMALIZED", "callpipe-langfuse")
	for name := range r.scaledObject {
		if name != "callpipe-worker-normalize" && name != "callpipe-worker-langfuse" {
			t.Errorf("ScaledObject %s is not checked by this test", name)
		}
	}
}

func checkProbe(t *testing.T, name, kind string, p *corev1.Probe, path string, ports []corev1.ContainerPort) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s: %s probe must be an HTTP GET of %s", name, kind, path)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("%s: %s probe path %q, want %q", name, kind, p.HTTPGet.Path, path)
	}
	if len(ports) == 0 || (p.HTTPGet.Port.StrVal != ports[0].Name && p.HTTPGet.Port.IntVal != ports[0].ContainerPort) {
		t.Errorf("%s: %s probe port %v is not the ops port", name, kind, p.HTTPGet.Port)
	}
}

// checkSecretsAreReferences: no secret-looking variable has a literal value;
// secrets come only from the Secret callpipe-secrets.
func checkSecretsAreReferences(t *testing.T, name string, c corev1.Container) {
	t.Helper()
	for _, e := range c.Env {
		if secretLike(e.Name) && e.ValueFrom == nil {
			t.Errorf("%s: env %s holds a literal value; use a secretKeyRef", name, e.Name)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name != secretName {
			t.Errorf("%s: env %s refers to secret %s, want %s", name, e.Name, e.ValueFrom.SecretKeyRef.Name, secretName)
		}
	}
	found := false
	for _, ef := range c.EnvFrom {
		if ef.SecretRef != nil && ef.SecretRef.Name == secretName {
			found = true
		}
	}
	if !found {
		t.Errorf("%s: envFrom must reference the Secret %s", name, secretName)
	}
}

func checkConfigMount(t *testing.T, name string, ps corev1.PodSpec, c corev1.Container, cmName string) {
	t.Helper()
	var vol string
	for _, v := range ps.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == cmName {
			vol = v.Name
		}
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		mounted = mounted || (m.Name == vol && m.MountPath == "/etc/callpipe")
	}
	if vol == "" || !mounted {
		t.Errorf("%s: ConfigMap %s must be mounted at /etc/callpipe", name, cmName)
	}
}

func checkScaledObject(t *testing.T, r *rendered, comp, stream, consumer string) {
	t.Helper()
	name := "callpipe-" + comp
	so := r.scaledObject[name]
	if so == nil {
		t.Errorf("ScaledObject %s missing", name)
		return
	}
	if so.APIVersion != "keda.sh/v1alpha1" || so.Kind != "ScaledObject" {
		t.Errorf("%s: %s %s", name, so.APIVersion, so.Kind)
	}
	d := r.deployments[so.Spec.ScaleTargetRef.Name]
	if d == nil {
		t.Errorf("%s: scaleTargetRef %q is not a rendered Deployment", name, so.Spec.ScaleTargetRef.Name)
	} else if d.Spec.Replicas != nil {
		t.Errorf("%s: the scaled Deployment sets replicas; every apply would fight KEDA's HPA", name)
	}
	if k := so.Spec.ScaleTargetRef.Kind; k != "" && k != "Deployment" {
		t.Errorf("%s: scaleTargetRef kind %q", name, k)
	}
	mn, mx := so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount
	if mn == nil || mx == nil || *mn < 1 || *mx <= *mn {
		t.Errorf("%s: want 1 <= minReplicaCount < maxReplicaCount (never scale a durable consumer to 0 while calls arrive), got %v..%v", name, mn, mx)
	}
	if len(so.Spec.Triggers) != 1 {
		t.Fatalf("%s: want one trigger, got %d", name, len(so.Spec.Triggers))
	}
	tr := so.Spec.Triggers[0]
	if tr.Type != "nats-jetstream" {
		t.Errorf("%s: trigger type %q, want nats-jetstream", name, tr.Type)
	}
	allowed := []string{"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold", "activationLagThreshold", "useHttps"}
	for k := range tr.Metadata {
		if !slices.Contains(allowed, k) {
			t.Errorf("%s: trigger metadata %q is not a nats-jetstream scaler parameter", name, k)
		}
	}
	want := map[string]string{"stream": stream, "consumer": consumer, "account": "$G", "useHttps": "false"}
	for k, v := range want {
		if tr.Metadata[k] != v {
			t.Errorf("%s: trigger %s=%q, want %q", name, k, tr.Metadata[k], v)
		}
	}
	ep := tr.Metadata["natsServerMonitoringEndpoint"]
	if !strings.HasSuffix(ep, ":8222") || strings.Contains(ep, "://") {
		t.Errorf("%s: natsServerMonitoringEndpoint %q: want host:8222 without a scheme", name, ep)
	}
	for _, k := range []string{"lagThreshold", "activationLagThreshold"} {
		var n int
		if _, err := fmt.Sscanf(tr.Metadata[k], "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != tr.Metadata[k] {
			t.Errorf("%s: %s=%q must be a non-negative integer", name, k, tr.Metadata[k])
		}
	}
}

// configText returns the callpipe.yaml of the rendered ConfigMap.
func configText(t *testing.T, r *rendered) string {
	t.Helper()
	for _, cm := range r.configMaps {
		if s, ok := cm.Data["callpipe.yaml"]; ok {
			return s
		}
	}
	t.Fatal("no ConfigMap holds callpipe.yaml")
	return ""
}

// TestKubernetesConfigLoads checks each ConfigMap's callpipe.yaml with the
// real configuration loader: `callpipe config print` refuses unknown keys
// and invalid values.
func TestKubernetesConfigLoads(t *testing.T) {
	bin := dockerBinary(t)
	for _, dir := range []string{"kubernetes/base", "kubernetes/overlays/example"} {
		r := render(t, dir)
		file := filepath.Join(t.TempDir(), "callpipe.yaml")
		cfg := configText(t, r)
		if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--config", file, "config", "print")
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: callpipe config print: %v\n%s", dir, err, out)
			continue
		}
		for _, secret := range []string{"password:", "secret_key:", "access_key:", "token:"} {
			for _, line := range strings.Split(cfg, "\n") {
				if k := strings.TrimSpace(line); strings.HasPrefix(k, secret) {
					t.Errorf("%s: ConfigMap holds %q: secrets belong in the Secret %s", dir, k, secretName)
				}
			}
		}
		for comp, c := range components {
			if !strings.Contains(string(out), fmt.Sprintf("0.0.0.0:%d", c.port)) {
				t.Errorf("%s: %s port %d: config does not listen on 0.0.0.0:%d\n%s", dir, comp, c.port, c.port, out)
			}
		}
	}
}

// cleanEnv is the environment without callpipe settings, so that only the file counts.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CALLPIPE_") && !strings.HasPrefix(kv, "LANGFUSE_") {
			env = append(env, kv)
		}
	}
	return env
}

func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
