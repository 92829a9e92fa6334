package langfuse_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

var specs = []string{"langfuse-3.225.4", "langfuse-4.16.0"}

// TestOpenAPIContract checks every request the sink sends against Langfuse's
// own OpenAPI definition, v3.225.4 and current, with kin-openapi.
func TestOpenAPIContract(t *testing.T) {
	for _, name := range specs {
		t.Run(name, func(t *testing.T) {
			spec, err := langfusetest.LoadOpenAPI(filepath.Join("..", "..", "integration", "fakes", "langfusetest", "testdata", name, "openapi.yml"))
			if err != nil {
				t.Fatal(err)
			}
			srv := langfusetest.New(langfusetest.Options{OpenAPI: spec})
			defer srv.Close()
			out := newOutput(t, srv, func(c *langfuse.OutputConfig) {
				c.Transport = langfuse.TransportIngestion
				c.Map.MaxFieldBytes = 2000
				c.Map.Release = "1.0"
			})
			cs := calls(20, "oa")
			cs[1].Status, cs[1].Error = 500, "boom"
			cs[2].Input, cs[2].Output = nil, nil
			cs[3].Input = json.RawMessage(`"` + strings.Repeat("x", 5000) + `"`)
			cs[4].FirstTokenTime, cs[4].CostUSD, cs[4].ModelParameters = nil, nil, nil
			cs[7].ModelParameters["response_format"] = json.RawMessage(`{"type": "json_object"}`)
			cs[7].ModelParameters["logit_bias"] = json.RawMessage(`{"50256": -100}`)
			cs[5].InputTokens, cs[5].OutputTokens, cs[5].TotalTokens = -1, -1, -1
			cs[6].Tags, cs[6].SessionID, cs[6].UserID = nil, "", ""
			res, err := out.WriteBatch(context.Background(), cs)
			if err != nil || states(res)[langfuse.Accepted] != len(cs) {
				t.Fatal(err, states(res))
			}
			if v := srv.Violations(); len(v) != 0 {
				t.Fatalf("%d requests violate %s, first: %s", len(v), name, v[0])
			}
			// The check is live: a request off the definition is reported.
			post(t, srv.URL, "Basic "+basic("pk-lf-test", "sk-lf-test"),
				`{"batch":[{"id":"e","timestamp":"2026-01-01T00:00:00Z","type":"generation-create","body":{"id":"g","usageDetails":"many"}}]}`)
			if len(srv.Violations()) != 1 {
				t.Fatalf("an off-definition request was not reported: %v", srv.Violations())
			}
		})
	}
}
