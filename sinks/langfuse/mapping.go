package langfuse

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/callpipe/callpipe/schema"
)

// Ingestion event types sent by the sink.
const (
	TypeTraceCreate      = "trace-create"
	TypeGenerationCreate = "generation-create"
)

// TruncationMarker starts the note appended to an input or output cut to
// the configured size.
const TruncationMarker = "…[truncated by callpipe:"

// Event is one ingestion API event envelope.
type Event struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	Timestamp string `json:"timestamp"`
	Body      any    `json:"body"`
}

// TraceBody is the body of a trace-create event.
type TraceBody struct {
	ID          string          `json:"id"`
	Timestamp   string          `json:"timestamp"`
	Name        string          `json:"name,omitempty"`
	UserID      string          `json:"userId,omitempty"`
	SessionID   string          `json:"sessionId,omitempty"`
	Input       json.RawMessage `json:"input,omitempty"`
	Output      json.RawMessage `json:"output,omitempty"`
	Metadata    json.RawMessage `json:"metadata,omitempty"`
	Tags        []string        `json:"tags,omitempty"`
	Environment string          `json:"environment,omitempty"`
	Release     string          `json:"release,omitempty"`
}

// GenerationBody is the body of a generation-create event.
type GenerationBody struct {
	ID                  string             `json:"id"`
	TraceID             string             `json:"traceId"`
	Name                string             `json:"name,omitempty"`
	StartTime           string             `json:"startTime"`
	EndTime             string             `json:"endTime,omitempty"`
	CompletionStartTime string             `json:"completionStartTime,omitempty"`
	Model               string             `json:"model,omitempty"`
	ModelParameters     json.RawMessage    `json:"modelParameters,omitempty"`
	Input               json.RawMessage    `json:"input,omitempty"`
	Output              json.RawMessage    `json:"output,omitempty"`
	Metadata            json.RawMessage    `json:"metadata,omitempty"`
	UsageDetails        map[string]int64   `json:"usageDetails,omitempty"`
	CostDetails         map[string]float64 `json:"costDetails,omitempty"`
	Level               string             `json:"level,omitempty"`
	StatusMessage       string             `json:"statusMessage,omitempty"`
	Environment         string             `json:"environment,omitempty"`
}

// MapOptions shape the events of a call.
type MapOptions struct {
	// Environment is sent on traces and generations ("" = Langfuse's "default").
	Environment string
	// Release is sent on traces ("" = none).
	Release string
	// MaxFieldBytes caps each input and output (0 = no cap). A larger value
	// is replaced by a JSON string holding its first bytes and a marker.
	MaxFieldBytes int
}

var envRe = regexp.MustCompile(`^[a-z0-9_-]{1,40}$`)

// ValidEnvironment reports whether Langfuse stores env as it is (lower case
// letters, digits, '-' and '_', at most 40 characters, no "langfuse" prefix).
func ValidEnvironment(env string) bool {
	return env == "" || (envRe.MatchString(env) && !strings.HasPrefix(env, "langfuse"))
}

// EnvelopeID is the stable envelope id of a call's event of type typ: a
// UUID-shaped SHA-256 of both, so a resend overwrites the same stored event.
func EnvelopeID(callID, typ string) string {
	var b [36]byte
	return string(appendEnvelopeID(b[:0], callID, typ))
}

// TraceID is the Langfuse trace id of a call: its trace_id, or its own id.
func TraceID(c *schema.Call) string {
	if c.TraceID != "" {
		return c.TraceID
	}
	return c.ID
}

// Name is the trace and generation name of a call: "<kind> <model>".
func Name(c *schema.Call) string {
	kind := c.Kind
	if kind == "" {
		kind = schema.KindOther
	}
	if c.Model == "" {
		return kind
	}
	return kind + " " + c.Model
}

func ts(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000000Z")
}

// Failed reports whether a call ended in an error.
func Failed(c *schema.Call) bool { return c.Status >= 400 || c.Error != "" }

// MapCall returns the trace-create and generation-create events of c. Their
// envelope ids and timestamps depend only on c, so sending them again
// leaves Langfuse's merged state unchanged.
func MapCall(c *schema.Call, o MapOptions) (trace, gen Event) {
	traceID := TraceID(c)
	start := ts(c.StartTime)
	name := Name(c)
	input := field(c.Input, c.InputText, o.MaxFieldBytes)
	output := field(c.Output, c.OutputText, o.MaxFieldBytes)
	meta := metadata(c)

	tb := &TraceBody{
		ID: traceID, Timestamp: start, Name: name, UserID: c.UserID, SessionID: c.SessionID,
		Input: input, Output: output, Metadata: meta, Tags: tags(c.Tags),
		Environment: o.Environment, Release: o.Release,
	}
	gb := &GenerationBody{
		ID: c.ID, TraceID: traceID, Name: name, StartTime: start, EndTime: ts(c.EndTime),
		Model: c.Model, ModelParameters: modelParameters(c.ModelParameters),
		Input: input, Output: output, Metadata: meta, UsageDetails: usage(c),
		Environment: o.Environment,
	}
	if c.FirstTokenTime != nil {
		gb.CompletionStartTime = ts(*c.FirstTokenTime)
	}
	if c.CostUSD != nil && *c.CostUSD >= 0 && !math.IsInf(*c.CostUSD, 0) {
		gb.CostDetails = map[string]float64{"total": *c.CostUSD}
	}
	if Failed(c) {
		gb.Level = "ERROR"
		gb.StatusMessage = c.Error
		if gb.StatusMessage == "" {
			gb.StatusMessage = "HTTP " + strconv.Itoa(c.Status)
		}
	}
	trace = Event{ID: EnvelopeID(c.ID, TypeTraceCreate), Type: TypeTraceCreate, Timestamp: start, Body: tb}
	gen = Event{ID: EnvelopeID(c.ID, TypeGenerationCreate), Type: TypeGenerationCreate, Timestamp: start, Body: gb}
	return trace, gen
}

// usage is input/output/total, without negative counts (which Langfuse
// rejects and Xinference reports as -1 when it has none).
func usage(c *schema.Call) map[string]int64 {
	if c.InputTokens < 0 && c.OutputTokens < 0 && c.TotalTokens < 0 {
		return nil
	}
	u := make(map[string]int64, 3)
	if c.InputTokens >= 0 {
		u["input"] = c.InputTokens
	}
	if c.OutputTokens >= 0 {
		u["output"] = c.OutputTokens
	}
	if c.TotalTokens >= 0 {
		u["total"] = c.TotalTokens
	}
	return u
}

// metadata is the call's metadata object (the call's own keys first,
// callpipe's keys overriding them), keys sorted, as compact JSON.
func metadata(c *schema.Call) json.RawMessage {
	var extra []string // the call's own keys that callpipe does not set, sorted
	size := 320 + len(c.Error) + len(c.Instance) + len(c.Endpoint) + 2*(len(c.ID)+len(c.BatchID)+len(c.TraceID))
	for k, v := range c.Metadata {
		if len(v) == 0 || ownMetadataKey(k) || !json.Valid(v) {
			continue
		}
		extra = append(extra, k)
		size += len(k) + len(v) + 4
	}
	slices.Sort(extra)
	m := metaWriter{b: append(make([]byte, 0, size), '{'), extra: extra, from: c.Metadata}
	// In key order, so that the object is sorted without sorting.
	m.str("api_key_prefix", c.APIKeyPrefix)
	m.key("callpipe")
	m.b = appendString(append(m.b, `{"call_id":`...), c.ID)
	if c.BatchID != "" {
		m.b = appendString(append(m.b, `,"batch_id":`...), c.BatchID)
	}
	m.b = appendString(append(m.b, `,"trace_id":`...), TraceID(c))
	if cp := c.Capture; cp != nil { // the capture policy that produced the payload
		m.b = appendString(append(m.b, `,"capture":{"mode":`...), cp.Mode)
		m.b = append(appendString(append(m.b, `,"mask_set":`...), cp.MaskSet), '}')
	}
	m.b = append(m.b, '}')
	m.str("endpoint", c.Endpoint)
	m.str("error", c.Error)
	m.str("finish_reason", c.FinishReason)
	m.str("instance", c.Instance)
	m.str("kind", c.Kind)
	m.num("latency_ms", c.LatencyMS)
	m.str("source", c.Source)
	m.num("status", int64(c.Status))
	if c.Stream {
		m.key("stream")
		m.b = append(m.b, "true"...)
	}
	if c.TTFTMS != nil {
		m.num("ttft_ms", *c.TTFTMS)
	}
	m.str("usage_source", c.UsageSource)
	m.str("user_source", c.UserSource)
	m.flush("\xff") // the remaining extra keys (UTF-8 never has 0xff)
	return append(m.b, '}')
}

// ownMetadataKey reports whether callpipe sets key k in metadata.
func ownMetadataKey(k string) bool {
	switch k {
	case "api_key_prefix", "callpipe", "endpoint", "error", "finish_reason", "instance", "kind",
		"latency_ms", "source", "status", "stream", "ttft_ms", "usage_source", "user_source":
		return true
	}
	return false
}

// metaWriter writes an object's keys in ascending order, merging in the
// sorted extra keys (with their values from from) before each own key.
type metaWriter struct {
	b     []byte
	extra []string
	from  map[string]json.RawMessage
}

func (m *metaWriter) key(k string) {
	m.flush(k)
	m.member(k)
}

// flush writes the extra keys that sort before k.
func (m *metaWriter) flush(k string) {
	for len(m.extra) > 0 && m.extra[0] < k {
		e := m.extra[0]
		m.extra = m.extra[1:]
		m.member(e)
		m.b = append(m.b, m.from[e]...)
	}
}

func (m *metaWriter) member(k string) {
	if len(m.b) > 1 {
		m.b = append(m.b, ',')
	}
	m.b = appendString(m.b, k)
	m.b = append(m.b, ':')
}

func (m *metaWriter) str(k, v string) {
	if v != "" {
		m.key(k)
		m.b = appendString(m.b, v)
	}
}

func (m *metaWriter) num(k string, v int64) {
	m.key(k)
	m.b = strconv.AppendInt(m.b, v, 10)
}

type kv struct {
	k string
	v []byte // JSON value
}

// object renders fields as a JSON object with sorted keys.
func object(fs []kv) json.RawMessage {
	slices.SortFunc(fs, func(a, b kv) int { return strings.Compare(a.k, b.k) })
	n := 2
	for _, f := range fs {
		n += len(f.k) + len(f.v) + 4
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	for i, f := range fs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, f.k)
		b = append(b, ':')
		b = append(b, f.v...)
	}
	return append(b, '}')
}

func tags(t []string) []string {
	if len(t) == 0 {
		return nil
	}
	out := append([]string(nil), t...)
	sort.Strings(out)
	return out
}

// modelParameters keeps the values Langfuse's OpenAPI MapValue allows
// (string, number, bool, string list) and sends anything else as its JSON text.
func modelParameters(p map[string]json.RawMessage) json.RawMessage {
	if len(p) == 0 {
		return nil
	}
	fs := make([]kv, 0, len(p))
	for k, raw := range p {
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || raw[0] == 'n' || !json.Valid(raw) { // null or not JSON
			continue
		}
		switch raw[0] {
		case '"', 't', 'f', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			fs = append(fs, kv{k, raw})
			continue
		}
		// Arrays of strings are kept; everything else (objects, other
		// arrays) is sent as its JSON text: Langfuse's OpenAPI MapValue is
		// string | integer | number | boolean | string[].
		strs, compact := stringArray(raw)
		if strs && compact {
			fs = append(fs, kv{k, raw})
			continue
		}
		var buf bytes.Buffer
		_ = json.Compact(&buf, raw) // raw is valid JSON
		if strs {
			fs = append(fs, kv{k, buf.Bytes()})
			continue
		}
		fs = append(fs, kv{k, appendString(nil, buf.String())})
	}
	if len(fs) == 0 {
		return nil
	}
	return object(fs)
}

// stringArray reports whether raw (valid JSON) is an array of strings, and
// whether it has no white space outside its strings.
func stringArray(raw []byte) (strs, compact bool) {
	if raw[0] != '[' {
		return false, false
	}
	compact = true
	ws := func(i int) int {
		for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\n' || raw[i] == '\r') {
			compact = false
			i++
		}
		return i
	}
	i := ws(1)
	if i < len(raw) && raw[i] == ']' {
		return true, compact
	}
	for i < len(raw) {
		if raw[i] != '"' {
			return false, false
		}
		for i++; i < len(raw) && raw[i] != '"'; i++ {
			if raw[i] == '\\' {
				i++
			}
		}
		i = ws(i + 1)
		if i >= len(raw) {
			return false, false
		}
		if raw[i] == ']' {
			return true, compact
		}
		if raw[i] != ',' {
			return false, false
		}
		i = ws(i + 1)
	}
	return false, false
}

// field is the structured value (or else the text, as a JSON string), cut
// to max bytes with a visible marker.
func field(structured json.RawMessage, text string, max int) json.RawMessage {
	raw := structured
	if len(raw) == 0 || string(raw) == "null" {
		if text == "" {
			return nil
		}
		b, _ := json.Marshal(text)
		raw = b
	}
	if max <= 0 || len(raw) <= max {
		return raw
	}
	keep := max
	for keep > 0 && !utf8.RuneStart(raw[keep]) {
		keep--
	}
	s := strings.ToValidUTF8(string(raw[:keep]), "") +
		fmt.Sprintf(" %s %d of %d bytes kept]", TruncationMarker, keep, len(raw))
	b, _ := json.Marshal(s)
	return b
}
