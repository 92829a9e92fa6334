package langfuse

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/callpipe/callpipe/schema"
)

// OTLPPath is Langfuse's OTLP/HTTP traces endpoint (Langfuse v4 and Cloud).
const OTLPPath = "/api/public/otel/v1/traces"

// OTLPTraceID is the 16-byte OTLP trace id of a call: its trace_id when
// that is already 32 hex digits, else the first 16 bytes of its SHA-256.
// Langfuse shows it as the trace id (hex).
func OTLPTraceID(c *schema.Call) []byte {
	id := TraceID(c)
	if b, err := hex.DecodeString(id); err == nil && len(b) == 16 && !allZero(b) {
		return b
	}
	h := sha256.Sum256([]byte("trace\x00" + id))
	return h[:16]
}

// OTLPSpanID is the 8-byte span id of a call's generation (stable, never zero).
func OTLPSpanID(c *schema.Call) []byte {
	h := sha256.Sum256([]byte("span\x00" + c.ID))
	if allZero(h[:8]) {
		h[7] = 1
	}
	return h[:8]
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func intAttr(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

// operationName is gen_ai.operation.name for a call kind (Langfuse maps
// chat/text_completion to GENERATION and embeddings to EMBEDDING).
func operationName(kind string) string {
	switch kind {
	case schema.KindChat:
		return "chat"
	case schema.KindCompletion:
		return "text_completion"
	case schema.KindEmbedding:
		return "embeddings"
	}
	return kind
}

// CallSpan is a call as one root OTLP span carrying the attributes Langfuse
// reads for the trace (langfuse.trace.*, user.id, session.id) and for the
// generation (langfuse.observation.*, gen_ai.*). The span is the trace's
// root, so it creates the trace and a GENERATION observation; ids and times
// depend only on the call, so a resend upserts.
func CallSpan(c *schema.Call, o MapOptions) *tracepb.Span {
	tr, gen := MapCall(c, o)
	tb, gb := tr.Body.(*TraceBody), gen.Body.(*GenerationBody)
	attrs := make([]*commonpb.KeyValue, 0, 32)
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, strAttr(k, v))
		}
	}
	raw := func(k string, v json.RawMessage) {
		if len(v) != 0 {
			attrs = append(attrs, strAttr(k, string(v)))
		}
	}
	jsonAttr := func(k string, v any) {
		if b, err := json.Marshal(v); err == nil {
			attrs = append(attrs, strAttr(k, string(b)))
		}
	}
	add("langfuse.trace.name", tb.Name)
	add("user.id", tb.UserID)
	add("session.id", tb.SessionID)
	raw("langfuse.trace.input", tb.Input)
	raw("langfuse.trace.output", tb.Output)
	raw("langfuse.trace.metadata", tb.Metadata)
	if len(tb.Tags) > 0 {
		vals := make([]*commonpb.AnyValue, len(tb.Tags))
		for i, t := range tb.Tags {
			vals[i] = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: t}}
		}
		attrs = append(attrs, &commonpb.KeyValue{Key: "langfuse.trace.tags",
			Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vals}}}})
	}
	add("langfuse.environment", o.Environment)
	add("langfuse.release", o.Release)
	add("langfuse.observation.type", "generation")
	add("langfuse.observation.level", gb.Level)
	add("langfuse.observation.status_message", gb.StatusMessage)
	raw("langfuse.observation.input", gb.Input)
	raw("langfuse.observation.output", gb.Output)
	raw("langfuse.observation.metadata", gb.Metadata)
	add("langfuse.observation.model.name", gb.Model)
	raw("langfuse.observation.model.parameters", gb.ModelParameters)
	if len(gb.UsageDetails) > 0 {
		jsonAttr("langfuse.observation.usage_details", gb.UsageDetails)
	}
	if len(gb.CostDetails) > 0 {
		jsonAttr("langfuse.observation.cost_details", gb.CostDetails)
	}
	add("langfuse.observation.completion_start_time", gb.CompletionStartTime)
	add("gen_ai.operation.name", operationName(c.Kind))
	add("gen_ai.request.model", c.Model)
	if v, ok := gb.UsageDetails["input"]; ok {
		attrs = append(attrs, intAttr("gen_ai.usage.input_tokens", v))
	}
	if v, ok := gb.UsageDetails["output"]; ok {
		attrs = append(attrs, intAttr("gen_ai.usage.output_tokens", v))
	}
	add("callpipe.call_id", c.ID)
	add("callpipe.trace_id", TraceID(c))
	span := &tracepb.Span{
		TraceId: OTLPTraceID(c), SpanId: OTLPSpanID(c), Name: Name(c), Kind: tracepb.Span_SPAN_KIND_CLIENT,
		StartTimeUnixNano: uint64(c.StartTime.UnixNano()), EndTimeUnixNano: uint64(c.EndTime.UnixNano()),
		Attributes: attrs,
	}
	if c.EndTime.Before(c.StartTime) || c.EndTime.IsZero() {
		span.EndTimeUnixNano = span.StartTimeUnixNano
	}
	if Failed(c) {
		span.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: gb.StatusMessage}
	}
	return span
}

// otlpTransport posts ExportTraceServiceRequests (protobuf, gzip).
type otlpTransport struct {
	url      string
	auth     string
	client   *http.Client
	resource []byte // ResourceSpans.resource field, encoded once
	scope    []byte // ScopeSpans.scope field, encoded once
	gz       sync.Pool
}

func newOTLPTransport(host, publicKey, secretKey string, client *http.Client) *otlpTransport {
	rb, _ := proto.Marshal(&resourcepb.Resource{Attributes: []*commonpb.KeyValue{strAttr("service.name", "callpipe")}})
	sb, _ := proto.Marshal(&commonpb.InstrumentationScope{Name: "callpipe-langfuse-sink"})
	return &otlpTransport{
		url: strings.TrimRight(host, "/") + OTLPPath, auth: basicAuth(publicKey, secretKey), client: client,
		resource: protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), rb),
		scope:    protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), sb),
	}
}

// marshalSpan is one span's bytes, ready to be framed into a request.
func marshalSpan(s *tracepb.Span) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(s)
}

// body frames spans as ExportTraceServiceRequest{resource_spans: [{resource,
// scope_spans: [{scope, spans}]}]} without re-encoding them.
func (t *otlpTransport) body(spans []encoded) []byte {
	n := len(t.scope)
	for _, s := range spans {
		n += len(s.raw) + 6
	}
	scopeSpans := make([]byte, 0, n)
	scopeSpans = append(scopeSpans, t.scope...)
	for _, s := range spans {
		scopeSpans = protowire.AppendTag(scopeSpans, 2, protowire.BytesType) // ScopeSpans.spans
		scopeSpans = protowire.AppendBytes(scopeSpans, s.raw)
	}
	rs := make([]byte, 0, len(t.resource)+len(scopeSpans)+8)
	rs = append(rs, t.resource...)
	rs = protowire.AppendTag(rs, 2, protowire.BytesType) // ResourceSpans.scope_spans
	rs = protowire.AppendBytes(rs, scopeSpans)
	out := protowire.AppendTag(make([]byte, 0, len(rs)+8), 1, protowire.BytesType) // ExportTraceServiceRequest.resource_spans
	return protowire.AppendBytes(out, rs)
}

func (t *otlpTransport) post(ctx context.Context, spans []encoded) (ingestionResponse, error) {
	raw := t.body(spans)
	var buf bytes.Buffer
	buf.Grow(len(raw) / 3)
	zw, _ := t.gz.Get().(*gzip.Writer)
	if zw == nil {
		zw, _ = gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	} else {
		zw.Reset(&buf)
	}
	_, _ = zw.Write(raw)
	_ = zw.Close()
	t.gz.Put(zw)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, &buf)
	if err != nil {
		return ingestionResponse{}, err
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Authorization", t.auth)
	req.Header.Set("User-Agent", "callpipe-langfuse-sink")
	resp, err := t.client.Do(req)
	if err != nil {
		return ingestionResponse{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return ingestionResponse{}, fmt.Errorf("read answer: %w", err)
	}
	r := ingestionResponse{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		r.AllAccepted = true
		return r, nil
	}
	r.Message = requestMessage(data)
	return r, nil
}
