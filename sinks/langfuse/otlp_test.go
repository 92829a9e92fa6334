package langfuse_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

func attrsOf(s *tracepb.Span) map[string]*commonpb.AnyValue {
	m := map[string]*commonpb.AnyValue{}
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

// TestCallSpanAttributes: the span round-trips through the official OTLP
// protobuf types and carries the attributes Langfuse reads (NOTES.md §3).
func TestCallSpanAttributes(t *testing.T) {
	c := fullCall("call-otlp")
	c.Status, c.Error = 500, "boom"
	span := langfuse.CallSpan(&c, langfuse.MapOptions{Environment: "prod", Release: "1.2"})
	b, err := proto.Marshal(&tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{span}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	var td tracepb.TracesData
	if err := proto.Unmarshal(b, &td); err != nil {
		t.Fatal(err)
	}
	s := td.ResourceSpans[0].ScopeSpans[0].Spans[0]
	if len(s.TraceId) != 16 || len(s.SpanId) != 8 || len(s.ParentSpanId) != 0 {
		t.Fatalf("ids %x %x parent %x", s.TraceId, s.SpanId, s.ParentSpanId)
	}
	if s.StartTimeUnixNano != uint64(c.StartTime.UnixNano()) || s.EndTimeUnixNano != uint64(c.EndTime.UnixNano()) ||
		s.Name != "chat qwen2.5-instruct" || s.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR {
		t.Fatalf("span %v", s)
	}
	a := attrsOf(s)
	for k, want := range map[string]string{
		"langfuse.trace.name": "chat qwen2.5-instruct", "user.id": "alice", "session.id": "sess-1",
		"langfuse.environment": "prod", "langfuse.release": "1.2", "langfuse.observation.type": "generation",
		"langfuse.observation.level": "ERROR", "langfuse.observation.status_message": "boom",
		"langfuse.observation.model.name": "qwen2.5-instruct", "gen_ai.request.model": "qwen2.5-instruct",
		"gen_ai.operation.name": "chat", "langfuse.observation.usage_details": `{"input":12,"output":30,"total":42}`,
		"langfuse.observation.cost_details":          `{"total":0.00042}`,
		"langfuse.observation.completion_start_time": "2026-11-26T10:00:00.323456Z",
		"langfuse.observation.input":                 `[{"role":"user","content":"hi"}]`, "callpipe.call_id": "call-otlp",
	} {
		if got := a[k].GetStringValue(); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if a["gen_ai.usage.input_tokens"].GetIntValue() != 12 || a["gen_ai.usage.output_tokens"].GetIntValue() != 30 {
		t.Error("gen_ai usage")
	}
	if tags := a["langfuse.trace.tags"].GetArrayValue().GetValues(); len(tags) != 2 || tags[0].GetStringValue() != "chat" {
		t.Errorf("tags %v", tags)
	}
	var md map[string]any
	if err := json.Unmarshal([]byte(a["langfuse.trace.metadata"].GetStringValue()), &md); err != nil || md["instance"] != "qwen2.5-instruct-0" {
		t.Errorf("metadata %v %v", md, err)
	}
	if !reflect.DeepEqual(langfuse.OTLPSpanID(&c), s.SpanId) {
		t.Error("span id not stable")
	}
	c.TraceID = "0123456789abcdef0123456789abcdef"
	if hex.EncodeToString(langfuse.OTLPTraceID(&c)) != c.TraceID {
		t.Error("a W3C trace id is not kept")
	}
}

func TestOTLPTransportContract(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{Version: "4.16.0"})
	defer srv.Close()
	out := newOutput(t, srv, nil)
	if out.Transport() != langfuse.TransportOTLP {
		t.Fatal(out.Transport())
	}
	cs := calls(300, "o")
	cs[1].Status, cs[1].Error = 503, "overloaded"
	srv.QueueFaults(langfusetest.Fault{Status: 429, RetryAfter: time.Second}, langfusetest.Fault{Status: 500})
	start := time.Now()
	res, err := out.WriteBatch(context.Background(), cs)
	if err != nil || states(res)[langfuse.Accepted] != 300 {
		t.Fatal(err, states(res))
	}
	if time.Since(start) < time.Second {
		t.Error("Retry-After not honoured on OTLP")
	}
	traces, obs := srv.Traces(), srv.Observations()
	if len(traces) != 300 || len(obs) != 300 {
		t.Fatalf("%d traces %d observations", len(traces), len(obs))
	}
	for i := range cs {
		c := &cs[i]
		tr := traces[hex.EncodeToString(langfuse.OTLPTraceID(c))]
		o := obs[hex.EncodeToString(langfuse.OTLPSpanID(c))]
		if tr.UserID != "alice" || tr.SessionID != "sess-1" || tr.Name != "chat qwen2.5-instruct" || tr.Environment != "test" ||
			!tr.Timestamp.Equal(c.StartTime) || fmt.Sprint(tr.Tags) != "[chat prod]" || tr.Metadata["instance"] != "qwen2.5-instruct-0" {
			t.Fatalf("trace %+v", tr)
		}
		if o.Type != "GENERATION" || o.Model != "qwen2.5-instruct" || o.UsageDetails["total"] != 42 ||
			o.CostDetails["total"] != 0.00042 || o.EndTime.Sub(o.StartTime) != 1500*time.Millisecond ||
			o.CompletionStartTime.Sub(o.StartTime) != 200*time.Millisecond || o.ModelParameters["temperature"] != 0.7 {
			t.Fatalf("observation %+v", o)
		}
		if (i == 1) != (o.Level == "ERROR") || (i == 1 && o.StatusMessage != "overloaded") {
			t.Fatalf("call %d level %q %q", i, o.Level, o.StatusMessage)
		}
	}
	before := fmt.Sprint(srv.Traces(), srv.Observations())
	if _, err := out.WriteBatch(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(srv.Traces(), srv.Observations()) != before {
		t.Fatal("OTLP resend changed the merged state")
	}

	srv.SetCredentials("pk-lf-test", "other")
	res, err = out.WriteBatch(context.Background(), cs[:3])
	if !errors.Is(err, langfuse.ErrUnauthorized) || states(res)[langfuse.Pending] != 3 || out.Health() == nil {
		t.Fatal(err, states(res))
	}
}

func TestOTLPFlakyServer(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{Version: "4.16.0"})
	defer srv.Close()
	srv.SetFailureRate(0.3, langfusetest.Fault{Status: 500}, langfusetest.Fault{Status: 503})
	out := newOutput(t, srv, func(c *langfuse.OutputConfig) { c.MaxBatchCount = 50; c.MaxRetries = 50 })
	cs := calls(1000, "of")
	res, err := out.WriteBatch(context.Background(), cs)
	if err != nil || states(res)[langfuse.Accepted] != 1000 {
		t.Fatal(err, states(res))
	}
	if len(srv.Traces()) != 1000 || len(srv.Observations()) != 1000 {
		t.Fatalf("%d %d", len(srv.Traces()), len(srv.Observations()))
	}
}

// BenchmarkWriteBatchOTLP is BenchmarkWriteBatch over OTLP (protobuf, gzip):
//
//	go test ./sinks/langfuse -run '^$' -bench WriteBatchOTLP -benchtime 100000x
func BenchmarkWriteBatchOTLP(b *testing.B) {
	benchWriteBatch(b, "4.16.0", langfuse.TransportOTLP)
}

// TestAppendSpanMatchesProto: the sink's hand-framed span bytes are exactly
// the deterministic protobuf encoding of CallSpan (so the official types
// decode them, attribute for attribute).
func TestAppendSpanMatchesProto(t *testing.T) {
	cs := calls(3, "w")
	cs[1].Status, cs[1].Error = 500, "boom"
	cs[2].Tags, cs[2].CostUSD, cs[2].InputTokens, cs[2].OutputTokens, cs[2].TotalTokens = nil, nil, -1, -1, -1
	cs[2].Input = json.RawMessage(`"` + strings.Repeat("é", 300) + `"`) // multi-byte varint lengths
	for i := range cs {
		o := langfuse.MapOptions{Environment: "e", Release: "r", MaxFieldBytes: 1 << 20}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(langfuse.CallSpan(&cs[i], o))
		if err != nil {
			t.Fatal(err)
		}
		got := langfuse.AppendSpan(nil, &cs[i], o)
		if !bytes.Equal(got, want) {
			var g tracepb.Span
			_ = proto.Unmarshal(got, &g)
			t.Fatalf("call %d: appendSpan differs from proto.Marshal(CallSpan):\n got %v\nwant %v", i, &g, langfuse.CallSpan(&cs[i], o))
		}
	}
}

// TestOTLPHeaders: every OTLP request carries the headers Langfuse's route
// reads, with an ingestion version it accepts (above 4 is refused).
func TestOTLPHeaders(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{Version: "4.16.0"})
	defer srv.Close()
	out := newOutput(t, srv, nil)
	if _, err := out.WriteBatch(context.Background(), calls(5, "h")); err != nil {
		t.Fatal(err)
	}
	reqs := srv.Requests()
	if len(reqs) == 0 {
		t.Fatal("no request")
	}
	for _, r := range reqs {
		if r.Path != langfuse.OTLPPath || r.Status != 200 || r.Header.Get("X-Langfuse-Ingestion-Version") != "4" ||
			r.Header.Get("X-Langfuse-Sdk-Name") != "callpipe" || r.Header.Get("Content-Encoding") != "gzip" ||
			r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Fatalf("request %s %d headers %v", r.Path, r.Status, r.Header)
		}
	}
	// The server enforces Langfuse's rule, so a wrong header would show up above.
	for v, want := range map[string]int{"5": 400, "x": 400, "3": 200, "4": 200} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+langfuse.OTLPPath, strings.NewReader(""))
		req.Header.Set("Authorization", "Basic "+basic("pk-lf-test", "sk-lf-test"))
		req.Header.Set("Content-Type", "application/x-protobuf")
		req.Header.Set("x-langfuse-ingestion-version", v)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("ingestion version %q → %d, want %d", v, resp.StatusCode, want)
		}
	}
}

// TestOTLPPartialSuccess: an answer whose partial_success rejects spans
// without naming them: the accepted spans are found by resending halves
// (a span upserts, so resending is harmless), a span rejected on its own is
// resent PartialRetries times and then dead-lettered with Langfuse's
// message; every other call is accepted and stored once.
func TestOTLPPartialSuccess(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{Version: "4.16.0"})
	defer srv.Close()
	bad := map[string]int{}
	srv.SetSpanFault(func(_ string, a map[string]any) string {
		id, _ := a["callpipe.call_id"].(string)
		if strings.HasSuffix(id, "3") {
			bad[id]++
			return "span " + id + " has an invalid attribute"
		}
		return ""
	})
	out := newOutput(t, srv, nil)
	cs := calls(40, "ps")
	res, err := out.WriteBatch(context.Background(), cs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		id := cs[i].ID
		if strings.HasSuffix(id, "3") {
			if r.State != langfuse.Rejected || !strings.Contains(r.Reason, "partial success") ||
				!strings.Contains(r.Reason, "invalid attribute") {
				t.Errorf("%s: %+v", id, r)
			}
			continue
		}
		if r.State != langfuse.Accepted {
			t.Errorf("%s: %+v", id, r)
		}
	}
	if len(srv.Observations()) != 36 || len(srv.Traces()) != 36 {
		t.Fatalf("%d observations, %d traces stored, want 36", len(srv.Observations()), len(srv.Traces()))
	}
	for i := range cs {
		if n := srv.Envelopes("observation", hex.EncodeToString(langfuse.OTLPSpanID(&cs[i]))); n != 0 && n != 1 {
			t.Fatalf("call %s stored as %d objects", cs[i].ID, n)
		}
	}
	// Halving resends accepted spans too: at most once per level (log2(40) < 6).
	if n := srv.OTLPSpans(); n > 40*7 {
		t.Errorf("%d spans accepted for 40 calls: the search is not bounded", n)
	}
	for id, n := range bad {
		// Sent in the batch, then in ever smaller halves, then alone 1+PartialRetries times: bounded.
		if n < 1+langfuse.PartialRetries || n > 20 {
			t.Errorf("%s sent %d times", id, n)
		}
	}
	if len(bad) != 4 {
		t.Errorf("%d bad calls seen, want 4", len(bad))
	}
	// A transient partial rejection (once) is resent and accepted.
	srv2 := langfusetest.New(langfusetest.Options{Version: "4.16.0"})
	defer srv2.Close()
	once := map[string]bool{}
	srv2.SetSpanFault(func(id string, _ map[string]any) string {
		if !once[id] {
			once[id] = true
			return "try again"
		}
		return ""
	})
	out2 := newOutput(t, srv2, nil)
	res, err = out2.WriteBatch(context.Background(), calls(10, "pt"))
	if err != nil || states(res)[langfuse.Accepted] != 10 || len(srv2.Observations()) != 10 {
		t.Fatal(err, states(res), len(srv2.Observations()))
	}
}
