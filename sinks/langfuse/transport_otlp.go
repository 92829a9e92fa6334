package langfuse

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
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

// attrWriter receives a span's attributes in order; CallSpan builds
// protobuf objects from them, appendSpan writes them straight to the wire.
type attrWriter interface {
	str(k, v string)
	raw(k string, v []byte) // a string attribute holding JSON text
	int(k string, v int64)
	strs(k string, v []string)
}

// spanAttributes is the mapping of a call to the attributes Langfuse reads
// for the trace (langfuse.trace.*, user.id, session.id) and for the
// generation (langfuse.observation.*, gen_ai.*).
func spanAttributes(c *schema.Call, o MapOptions, tb *TraceBody, gb *GenerationBody, w attrWriter) {
	add := func(k, v string) {
		if v != "" {
			w.str(k, v)
		}
	}
	raw := func(k string, v json.RawMessage) {
		if len(v) != 0 {
			w.raw(k, v)
		}
	}
	add("langfuse.trace.name", tb.Name)
	add("user.id", tb.UserID)
	add("session.id", tb.SessionID)
	raw("langfuse.trace.input", tb.Input)
	raw("langfuse.trace.output", tb.Output)
	raw("langfuse.trace.metadata", tb.Metadata)
	if len(tb.Tags) > 0 {
		w.strs("langfuse.trace.tags", tb.Tags)
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
		f := fields{first: true}
		f.ints("", gb.UsageDetails)
		w.raw("langfuse.observation.usage_details", f.b[3:]) // drop the empty key `"":`
	}
	if len(gb.CostDetails) > 0 {
		f := fields{first: true}
		f.floats("", gb.CostDetails)
		w.raw("langfuse.observation.cost_details", f.b[3:])
	}
	add("langfuse.observation.completion_start_time", gb.CompletionStartTime)
	add("gen_ai.operation.name", operationName(c.Kind))
	add("gen_ai.request.model", c.Model)
	if v, ok := gb.UsageDetails["input"]; ok {
		w.int("gen_ai.usage.input_tokens", v)
	}
	if v, ok := gb.UsageDetails["output"]; ok {
		w.int("gen_ai.usage.output_tokens", v)
	}
	add("callpipe.call_id", c.ID)
	add("callpipe.trace_id", TraceID(c))
}

// spanTimes are the span's start and end (never before the start).
func spanTimes(c *schema.Call) (start, end uint64) {
	start = uint64(c.StartTime.UnixNano())
	if c.EndTime.Before(c.StartTime) || c.EndTime.IsZero() {
		return start, start
	}
	return start, uint64(c.EndTime.UnixNano())
}

// pbAttrs collects attributes as protobuf objects.
type pbAttrs []*commonpb.KeyValue

func (a *pbAttrs) str(k, v string)        { *a = append(*a, strAttr(k, v)) }
func (a *pbAttrs) raw(k string, v []byte) { *a = append(*a, strAttr(k, string(v))) }
func (a *pbAttrs) int(k string, v int64) {
	*a = append(*a, &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}})
}
func (a *pbAttrs) strs(k string, v []string) {
	vals := make([]*commonpb.AnyValue, len(v))
	for i, t := range v {
		vals[i] = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: t}}
	}
	*a = append(*a, &commonpb.KeyValue{Key: k,
		Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vals}}}})
}

// CallSpan is a call as one root OTLP span carrying the attributes Langfuse
// reads (see spanAttributes). The span is the trace's root, so it creates
// the trace and a GENERATION observation; ids and times depend only on the
// call, so a resend upserts. The sink writes the same bytes with appendSpan.
func CallSpan(c *schema.Call, o MapOptions) *tracepb.Span {
	tr, gen := MapCall(c, o)
	gb := gen.Body.(*GenerationBody)
	attrs := make(pbAttrs, 0, 32)
	spanAttributes(c, o, tr.Body.(*TraceBody), gb, &attrs)
	start, end := spanTimes(c)
	span := &tracepb.Span{
		TraceId: OTLPTraceID(c), SpanId: OTLPSpanID(c), Name: Name(c), Kind: tracepb.Span_SPAN_KIND_CLIENT,
		StartTimeUnixNano: start, EndTimeUnixNano: end, Attributes: attrs,
	}
	if Failed(c) {
		span.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: gb.StatusMessage}
	}
	return span
}

// Field numbers of opentelemetry/proto/trace/v1 and common/v1 used by appendSpan.
const (
	fSpanTraceID    = 1
	fSpanSpanID     = 2
	fSpanName       = 5
	fSpanKind       = 6
	fSpanStart      = 7
	fSpanEnd        = 8
	fSpanAttributes = 9
	fSpanStatus     = 15
	fStatusMessage  = 2
	fStatusCode     = 3
	fKVKey          = 1
	fKVValue        = 2
	fAnyString      = 1
	fAnyInt         = 3
	fAnyArray       = 5
	fArrayValues    = 1
	spanKindClient  = 3 // SPAN_KIND_CLIENT
	statusCodeError = 2 // STATUS_CODE_ERROR
	sizeTagOneByte  = 1 // every field number here is < 16
	wireBytes       = protowire.BytesType
	wireVarint      = protowire.VarintType
	wireFixed64     = protowire.Fixed64Type
)

// wireAttrs appends attributes as Span.attributes fields.
type wireAttrs struct{ b []byte }

func sizeField(n int) int { return sizeTagOneByte + protowire.SizeBytes(n) }

func (w *wireAttrs) kv(k string, anyLen int) {
	w.b = protowire.AppendTag(w.b, fSpanAttributes, wireBytes)
	w.b = protowire.AppendVarint(w.b, uint64(sizeField(len(k))+sizeField(anyLen)))
	w.b = protowire.AppendTag(w.b, fKVKey, wireBytes)
	w.b = protowire.AppendString(w.b, k)
	w.b = protowire.AppendTag(w.b, fKVValue, wireBytes)
	w.b = protowire.AppendVarint(w.b, uint64(anyLen))
}

func (w *wireAttrs) str(k, v string) {
	w.kv(k, sizeField(len(v)))
	w.b = protowire.AppendTag(w.b, fAnyString, wireBytes)
	w.b = protowire.AppendString(w.b, v)
}

func (w *wireAttrs) raw(k string, v []byte) {
	w.kv(k, sizeField(len(v)))
	w.b = protowire.AppendTag(w.b, fAnyString, wireBytes)
	w.b = protowire.AppendBytes(w.b, v)
}

func (w *wireAttrs) int(k string, v int64) {
	w.kv(k, sizeTagOneByte+protowire.SizeVarint(uint64(v)))
	w.b = protowire.AppendTag(w.b, fAnyInt, wireVarint)
	w.b = protowire.AppendVarint(w.b, uint64(v))
}

func (w *wireAttrs) strs(k string, v []string) {
	arr := 0
	for _, s := range v {
		arr += sizeField(sizeField(len(s)))
	}
	w.kv(k, sizeField(arr))
	w.b = protowire.AppendTag(w.b, fAnyArray, wireBytes)
	w.b = protowire.AppendVarint(w.b, uint64(arr))
	for _, s := range v {
		w.b = protowire.AppendTag(w.b, fArrayValues, wireBytes)
		w.b = protowire.AppendVarint(w.b, uint64(sizeField(len(s))))
		w.b = protowire.AppendTag(w.b, fAnyString, wireBytes)
		w.b = protowire.AppendString(w.b, s)
	}
}

// appendSpan appends the encoding of CallSpan(c, o) (the same bytes as its
// deterministic proto.Marshal) without building the protobuf objects.
func appendSpan(b []byte, c *schema.Call, o MapOptions) []byte {
	tr, gen := MapCall(c, o)
	gb := gen.Body.(*GenerationBody)
	b = protowire.AppendTag(b, fSpanTraceID, wireBytes)
	b = protowire.AppendBytes(b, OTLPTraceID(c))
	b = protowire.AppendTag(b, fSpanSpanID, wireBytes)
	b = protowire.AppendBytes(b, OTLPSpanID(c))
	b = protowire.AppendTag(b, fSpanName, wireBytes)
	b = protowire.AppendString(b, Name(c))
	b = protowire.AppendTag(b, fSpanKind, wireVarint)
	b = protowire.AppendVarint(b, spanKindClient)
	start, end := spanTimes(c)
	if start != 0 {
		b = protowire.AppendTag(b, fSpanStart, wireFixed64)
		b = protowire.AppendFixed64(b, start)
	}
	if end != 0 {
		b = protowire.AppendTag(b, fSpanEnd, wireFixed64)
		b = protowire.AppendFixed64(b, end)
	}
	w := wireAttrs{b: b}
	spanAttributes(c, o, tr.Body.(*TraceBody), gb, &w)
	b = w.b
	if Failed(c) {
		st := sizeTagOneByte + protowire.SizeVarint(statusCodeError)
		if gb.StatusMessage != "" {
			st += sizeField(len(gb.StatusMessage))
		}
		b = protowire.AppendTag(b, fSpanStatus, wireBytes)
		b = protowire.AppendVarint(b, uint64(st))
		if gb.StatusMessage != "" {
			b = protowire.AppendTag(b, fStatusMessage, wireBytes)
			b = protowire.AppendString(b, gb.StatusMessage)
		}
		b = protowire.AppendTag(b, fStatusCode, wireVarint)
		b = protowire.AppendVarint(b, statusCodeError)
	}
	return b
}

// Headers Langfuse's OTLP route reads (web/src/pages/api/public/otel/v1/traces):
// an ingestion version above 4 is refused with 400; "4" is the opt-in of a
// custom OTel exporter to v4's direct event write, and the SDK name tells
// Langfuse who sent the spans.
const (
	HeaderIngestionVersion = "X-Langfuse-Ingestion-Version"
	IngestionVersion       = "4"
	HeaderSDKName          = "X-Langfuse-Sdk-Name"
	SDKName                = "callpipe"
)

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

// writeBody writes spans framed as ExportTraceServiceRequest{resource_spans:
// [{resource, scope_spans: [{scope, spans}]}]} to w, without re-encoding or
// copying them into one buffer first.
func (t *otlpTransport) writeBody(w io.Writer, spans []encoded) error {
	scopeSpans := len(t.scope)
	for _, s := range spans {
		scopeSpans += sizeField(len(s.raw))
	}
	rs := len(t.resource) + sizeField(scopeSpans)
	head := make([]byte, 0, 32+len(t.resource)+len(t.scope))
	head = protowire.AppendTag(head, 1, protowire.BytesType) // ExportTraceServiceRequest.resource_spans
	head = protowire.AppendVarint(head, uint64(rs))
	head = append(head, t.resource...)
	head = protowire.AppendTag(head, 2, protowire.BytesType) // ResourceSpans.scope_spans
	head = protowire.AppendVarint(head, uint64(scopeSpans))
	head = append(head, t.scope...)
	if _, err := w.Write(head); err != nil {
		return err
	}
	var frame [16]byte
	for _, s := range spans {
		f := protowire.AppendTag(frame[:0], 2, protowire.BytesType) // ScopeSpans.spans
		f = protowire.AppendVarint(f, uint64(len(s.raw)))
		if _, err := w.Write(f); err != nil {
			return err
		}
		if _, err := w.Write(s.raw); err != nil {
			return err
		}
	}
	return nil
}

func (t *otlpTransport) post(ctx context.Context, spans []encoded) (ingestionResponse, error) {
	n := 0
	for _, s := range spans {
		n += len(s.raw)
	}
	var buf bytes.Buffer
	buf.Grow(n/4 + 512)
	zw, _ := t.gz.Get().(*gzip.Writer)
	if zw == nil {
		zw, _ = gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	} else {
		zw.Reset(&buf)
	}
	err := t.writeBody(zw, spans)
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	t.gz.Put(zw)
	if err != nil {
		return ingestionResponse{}, fmt.Errorf("compress request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, &buf)
	if err != nil {
		return ingestionResponse{}, err
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set(HeaderIngestionVersion, IngestionVersion)
	req.Header.Set(HeaderSDKName, SDKName)
	return exchange(t.client, req, t.auth, 1<<20, func(r *ingestionResponse, header http.Header, data []byte) {
		r.AllAccepted = true
		r.Rejected, r.Message = partialSuccess(header.Get("Content-Type"), data)
	})
}

// partialSuccess reads ExportTraceServiceResponse.partial_success from a
// 2xx answer (protobuf or JSON, by content type). Langfuse answers "{}"; an
// answer that does not decode is a plain success, as OTLP/HTTP defines 2xx.
func partialSuccess(contentType string, data []byte) (rejected int64, message string) {
	if len(data) == 0 {
		return 0, ""
	}
	var r coltracepb.ExportTraceServiceResponse
	var err error
	if strings.HasPrefix(strings.ToLower(contentType), "application/x-protobuf") {
		err = proto.Unmarshal(data, &r)
	} else {
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(data, &r)
	}
	if err != nil {
		return 0, ""
	}
	return r.GetPartialSuccess().GetRejectedSpans(), r.GetPartialSuccess().GetErrorMessage()
}
