package deploy

import (
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestKubernetesEncryptsAtRest: the NATS chart values encrypt the JetStream
// store with a key from a Secret (not in the values), the example overlay
// asks S3 for SSE-S3, and the README lists the settings key of the sealed
// Langfuse secret among callpipe's secrets.
func TestKubernetesEncryptsAtRest(t *testing.T) {
	raw, err := os.ReadFile("kubernetes/nats-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Config struct {
			JetStream struct {
				Merge map[string]string `yaml:"merge"`
			} `yaml:"jetstream"`
		} `yaml:"config"`
		Container struct {
			Env map[string]struct {
				ValueFrom struct {
					SecretKeyRef struct{ Name, Key string } `yaml:"secretKeyRef"`
				} `yaml:"valueFrom"`
			} `yaml:"env"`
		} `yaml:"container"`
	}
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	m := v.Config.JetStream.Merge
	if m["cipher"] != "chachapoly" && m["cipher"] != "aes" {
		t.Errorf("nats-values: jetstream cipher %q, want chachapoly or aes", m["cipher"])
	}
	if m["key"] != "<< $JETSTREAM_KEY >>" {
		t.Errorf("nats-values: jetstream key %q, want the environment variable << $JETSTREAM_KEY >>", m["key"])
	}
	if ref := v.Container.Env["JETSTREAM_KEY"].ValueFrom.SecretKeyRef; ref.Name == "" || ref.Key == "" {
		t.Errorf("nats-values: JETSTREAM_KEY does not come from a Secret: %+v", ref)
	}

	cfg := configText(t, render(t, "kubernetes/overlays/example"))
	if !strings.Contains(cfg, "\n  sse: sse-s3\n") {
		t.Errorf("example overlay: s3.sse is not sse-s3:\n%s", cfg)
	}
	readme, err := os.ReadFile("kubernetes/README.md")
	if err != nil || !strings.Contains(string(readme), "| `CALLPIPE_LANGFUSE_SETTINGS_KEY` |") {
		t.Errorf("kubernetes/README.md does not list CALLPIPE_LANGFUSE_SETTINGS_KEY among the secrets (%v)", err)
	}
}
