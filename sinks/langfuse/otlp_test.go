package langfuse_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/callpipe/callpipe/sinks/langfuse"
	"github.com/callpipe/callpipe/sinks/langfuse/langfusetest"
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
	srv := langfusetest.New(langfusetest.Options{Version: "4.16.0"})
	defer srv.Close()
	out := newOutput(b, srv, func(c *langfuse.OutputConfig) { c.MaxInFlight = 8 })
	const batch = 2000
	cs := calls(batch, "bench")
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n := min(batch, b.N-sent)
		res, err := out.WriteBatch(context.Background(), cs[:n])
		if err != nil || states(res)[langfuse.Accepted] != n {
			b.Fatal(err, states(res))
		}
		sent += n
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "generations/s")
}
