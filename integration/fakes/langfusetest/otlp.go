package langfusetest

import (
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// otel serves POST /api/public/otel/v1/traces like Langfuse v4: Basic
// pk:sk only (Bearer → 403), protobuf or JSON, optional gzip, invalid span
// or trace ids reject the whole batch with 400; each span becomes an
// observation (and a root span also the trace) with Langfuse's attribute
// mapping, validated and stored like ingestion events.
func (s *Server) otel(w http.ResponseWriter, r *http.Request) {
	if !methodAllowed(w, r, http.MethodPost) {
		return
	}
	s.mu.Lock()
	level := s.accessLevel(r.Header.Get("Authorization"))
	fault := s.nextFault()
	s.mu.Unlock()
	var body io.Reader = r.Body
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"message": "invalid gzip body"})
			return
		}
		defer zr.Close()
		body = zr
	}
	data, err := io.ReadAll(body)
	fail := func(status int, v any) {
		s.mu.Lock()
		s.logRequest(r, status, 0, len(data))
		s.mu.Unlock()
		writeJSON(w, status, v)
	}
	if err != nil {
		fail(http.StatusBadRequest, map[string]string{"message": "unreadable body: " + err.Error()})
		return
	}
	switch level {
	case "":
		fail(http.StatusUnauthorized, map[string]string{"message": "Invalid credentials"})
		return
	case "scores":
		fail(http.StatusForbidden, map[string]string{"message": "Access denied"})
		return
	}
	if s.applyFault(w, fault, fail) {
		return
	}
	if v := langfuseHeader(r.Header, "x-langfuse-ingestion-version"); v != "" {
		if n, ok := parseIntPrefix(v); !ok || n > 4 {
			fail(http.StatusBadRequest, map[string]string{"error": `Unsupported x-langfuse-ingestion-version: "` + v + `". Maximum supported: "4".`})
			return
		}
	}
	// The official OTLP request type, as Langfuse decodes it ($root...ExportTraceServiceRequest).
	var req coltracepb.ExportTraceServiceRequest
	ct := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/x-protobuf"):
		err = proto.Unmarshal(data, &req)
	case strings.HasPrefix(ct, "application/json"):
		err = protojson.Unmarshal(data, &req)
	default:
		fail(http.StatusUnsupportedMediaType, map[string]string{"message": "Unsupported content type " + ct})
		return
	}
	if err != nil {
		fail(http.StatusBadRequest, map[string]string{"message": "Invalid OTLP payload: " + err.Error()})
		return
	}
	type spanEvents struct {
		id     string
		attrs  attrs
		events []envelope
	}
	var spans []spanEvents
	nspans := 0
	for _, rs := range req.ResourceSpans {
		resAttrs := attrMap(nil)
		if rs.Resource != nil {
			resAttrs = attrMap(rs.Resource.Attributes)
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				nspans++
				if len(sp.TraceId) != 16 || allZero(sp.TraceId) || len(sp.SpanId) != 8 || allZero(sp.SpanId) {
					fail(http.StatusBadRequest, map[string]string{"message": "Invalid span or trace id"})
					return
				}
				evs, verr := spanToEvents(sp, resAttrs)
				if verr != "" {
					fail(http.StatusBadRequest, map[string]string{"message": "Invalid span: " + verr})
					return
				}
				spans = append(spans, spanEvents{hex.EncodeToString(sp.SpanId), attrMap(sp.Attributes), evs})
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var rejected int64
	var reason string
	for _, sp := range spans {
		if s.spanFault != nil {
			if why := s.spanFault(sp.id, sp.attrs); why != "" {
				rejected, reason = rejected+1, why
				s.rejected++
				continue
			}
		}
		for _, ev := range sp.events {
			s.store(ev)
			s.accepted++
		}
		s.otlpSpans++
	}
	s.logRequest(r, http.StatusOK, nspans, len(data))
	if rejected == 0 {
		// What Langfuse answers (the route returns {}).
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("{}"))
		return
	}
	// OTLP/HTTP: the answer is encoded like the request.
	resp := &coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{RejectedSpans: rejected, ErrorMessage: reason}}
	var out []byte
	if strings.HasPrefix(ct, "application/x-protobuf") {
		out, _ = proto.Marshal(resp)
	} else {
		out, _ = protojson.Marshal(resp)
	}
	w.Header().Set("Content-Type", strings.Split(ct, ";")[0])
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// langfuseHeader reads a Langfuse header sent with hyphens or underscores.
func langfuseHeader(h http.Header, name string) string {
	if v := h.Get(name); v != "" {
		return v
	}
	return h.Get(strings.ReplaceAll(name, "-", "_"))
}

// parseIntPrefix is JavaScript's parseInt(v, 10): the leading integer, or
// not ok (NaN) when there is none.
func parseIntPrefix(v string) (int, bool) {
	v = strings.TrimSpace(v)
	end := 0
	if end < len(v) && (v[end] == '-' || v[end] == '+') {
		end++
	}
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	n, err := strconv.Atoi(v[:end])
	return n, err == nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// attrs is a span's attributes as Go values (strings, int64, float64, bool, []any).
type attrs map[string]any

func attrMap(kvs []*commonpb.KeyValue) attrs {
	m := attrs{}
	for _, kv := range kvs {
		m[kv.Key] = anyValue(kv.Value)
	}
	return m
}

func anyValue(v *commonpb.AnyValue) any {
	if v == nil {
		return nil
	}
	switch x := v.Value.(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_ArrayValue:
		out := make([]any, 0, len(x.ArrayValue.GetValues()))
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, anyValue(e))
		}
		return out
	}
	return nil
}

func (a attrs) str(keys ...string) string {
	for _, k := range keys {
		if s, ok := a[k].(string); ok && s != "" {
			return s
		}
	}
	return ""
}

// jsonValue is an attribute holding JSON text, as a raw value (a string
// that is not JSON is kept as a JSON string, like Langfuse does).
func (a attrs) jsonValue(k string) json.RawMessage {
	s, ok := a[k].(string)
	if !ok || s == "" {
		return nil
	}
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	b, _ := json.Marshal(s)
	return b
}

func rawJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func isoNanos(n uint64) string {
	return time.Unix(0, int64(n)).UTC().Format(time.RFC3339Nano)
}

// spanToEvents converts a span into the ingestion events Langfuse's OTLP
// processor derives from it, validated with the ingestion rules.
func spanToEvents(sp *tracepb.Span, res attrs) ([]envelope, string) {
	a := attrMap(sp.Attributes)
	traceID, spanID := hex.EncodeToString(sp.TraceId), hex.EncodeToString(sp.SpanId)
	start := time.Unix(0, int64(sp.StartTimeUnixNano)).UTC()
	env := a.str("langfuse.environment", "deployment.environment.name", "deployment.environment")
	if env == "" {
		env = res.str("langfuse.environment", "deployment.environment.name", "deployment.environment")
	}
	release := a.str("langfuse.release", "service.version")
	if release == "" {
		release = res.str("langfuse.release", "service.version")
	}
	var out []envelope
	root := len(sp.ParentSpanId) == 0 || a["langfuse.internal.as_root"] == true
	if root {
		tb := rawBody{"id": rawJSON(traceID), "timestamp": rawJSON(start.Format(time.RFC3339Nano))}
		name := a.str("langfuse.trace.name")
		if name == "" {
			name = sp.Name
		}
		tb["name"] = rawJSON(name)
		if v := a.str("user.id", "langfuse.user.id"); v != "" {
			tb["userId"] = rawJSON(v)
		}
		if v := a.str("session.id", "langfuse.session.id"); v != "" {
			tb["sessionId"] = rawJSON(v)
		}
		for k, attr := range map[string]string{"input": "langfuse.trace.input", "output": "langfuse.trace.output", "metadata": "langfuse.trace.metadata"} {
			if v := a.jsonValue(attr); v != nil {
				tb[k] = v
			}
		}
		switch t := a["langfuse.trace.tags"].(type) {
		case []any:
			tb["tags"] = rawJSON(t)
		case string:
			tb["tags"] = a.jsonValue("langfuse.trace.tags")
		}
		if env != "" {
			tb["environment"] = rawJSON(env)
		}
		if release != "" {
			tb["release"] = rawJSON(release)
		}
		if e := validateTrace(tb); e != "" {
			return nil, "trace: " + e
		}
		out = append(out, envelope{ID: "otel-trace-" + spanID, Type: "trace-create", Timestamp: start, BodyID: traceID, Body: tb})
	}

	typ := strings.ToLower(a.str("langfuse.observation.type"))
	model := a.str("langfuse.observation.model.name", "gen_ai.response.model", "gen_ai.request.model")
	if typ == "" {
		switch a.str("gen_ai.operation.name") {
		case "chat", "text_completion", "generate_content":
			typ = "generation"
		case "embeddings":
			typ = "embedding"
		default:
			if model != "" {
				typ = "generation"
			} else {
				typ = "span"
			}
		}
	}
	ob := rawBody{
		"id": rawJSON(spanID), "traceId": rawJSON(traceID), "name": rawJSON(sp.Name),
		"startTime": rawJSON(start.Format(time.RFC3339Nano)),
	}
	if sp.EndTimeUnixNano != 0 {
		ob["endTime"] = rawJSON(isoNanos(sp.EndTimeUnixNano))
	}
	if len(sp.ParentSpanId) != 0 {
		ob["parentObservationId"] = rawJSON(hex.EncodeToString(sp.ParentSpanId))
	}
	if model != "" {
		ob["model"] = rawJSON(model)
	}
	for k, attr := range map[string]string{
		"input": "langfuse.observation.input", "output": "langfuse.observation.output",
		"metadata": "langfuse.observation.metadata", "modelParameters": "langfuse.observation.model.parameters",
		"usageDetails": "langfuse.observation.usage_details", "costDetails": "langfuse.observation.cost_details",
	} {
		if v := a.jsonValue(attr); v != nil {
			ob[k] = v
		}
	}
	if _, ok := ob["usageDetails"]; !ok {
		u := map[string]any{}
		if v, ok := a["gen_ai.usage.input_tokens"]; ok {
			u["input"] = v
		} else if v, ok := a["gen_ai.usage.prompt_tokens"]; ok {
			u["input"] = v
		}
		if v, ok := a["gen_ai.usage.output_tokens"]; ok {
			u["output"] = v
		} else if v, ok := a["gen_ai.usage.completion_tokens"]; ok {
			u["output"] = v
		}
		if len(u) > 0 {
			ob["usageDetails"] = rawJSON(u)
		}
	}
	if v := a.str("langfuse.observation.completion_start_time"); v != "" {
		ob["completionStartTime"] = rawJSON(strings.Trim(v, `"`))
	}
	if v := a.str("langfuse.observation.level"); v != "" {
		ob["level"] = rawJSON(v)
	} else if sp.Status != nil && sp.Status.Code == tracepb.Status_STATUS_CODE_ERROR {
		ob["level"] = rawJSON("ERROR")
	}
	if v := a.str("langfuse.observation.status_message"); v != "" {
		ob["statusMessage"] = rawJSON(v)
	} else if sp.Status != nil && sp.Status.Message != "" {
		ob["statusMessage"] = rawJSON(sp.Status.Message)
	}
	if env != "" {
		ob["environment"] = rawJSON(env)
	}
	evType := typ + "-create"
	if !eventTypes[evType] {
		evType = "span-create"
	}
	if e := validateObservation(evType, ob); e != "" {
		return nil, "observation: " + e
	}
	out = append(out, envelope{ID: "otel-obs-" + spanID, Type: evType, Timestamp: start, BodyID: spanID, Body: ob})
	return out, ""
}
