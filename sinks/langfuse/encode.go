package langfuse

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/callpipe/callpipe/schema"
)

// The sink's hot path writes events with these appenders instead of
// encoding/json (which reflects and re-validates every raw input/output).
// They produce the same JSON as json.Marshal of the types in mapping.go,
// except that raw values (input, output) are copied as they are;
// TestAppendMatchesMarshal keeps the two in step.

// appendString is schema's JSON string appender, shared by every hand-written encoder.
func appendString(b []byte, s string) []byte { return schema.AppendJSONString(b, s) }

// fields appends `"key":value` members, with a comma before all but the first.
type fields struct {
	b     []byte
	first bool
}

func (f *fields) key(k string) {
	if !f.first {
		f.b = append(f.b, ',')
	}
	f.first = false
	f.b = append(f.b, '"')
	f.b = append(f.b, k...) // keys are constants without escapes
	f.b = append(f.b, '"', ':')
}

func (f *fields) str(k, v string) {
	if v != "" {
		f.key(k)
		f.b = appendString(f.b, v)
	}
}

func (f *fields) strAlways(k, v string) {
	f.key(k)
	f.b = appendString(f.b, v)
}

func (f *fields) raw(k string, v json.RawMessage) {
	if len(v) != 0 {
		f.key(k)
		f.b = append(f.b, v...)
	}
}

func (f *fields) strings(k string, v []string) {
	if len(v) == 0 {
		return
	}
	f.key(k)
	f.b = append(f.b, '[')
	for i, s := range v {
		if i > 0 {
			f.b = append(f.b, ',')
		}
		f.b = appendString(f.b, s)
	}
	f.b = append(f.b, ']')
}

func (f *fields) ints(k string, m map[string]int64) { appendMap(f, k, m, appendInt) }

func (f *fields) floats(k string, m map[string]float64) { appendMap(f, k, m, appendFloat) }

func appendInt(b []byte, v int64) []byte { return strconv.AppendInt(b, v, 10) }

// appendMap appends m under k as a JSON object, its keys sorted as
// json.Marshal sorts them and each value written by appendValue; nothing
// when m is empty.
func appendMap[V any](f *fields, k string, m map[string]V, appendValue func([]byte, V) []byte) {
	if len(m) == 0 {
		return
	}
	f.key(k)
	keys := make([]string, 0, len(m))
	for mk := range m {
		keys = append(keys, mk)
	}
	sort.Strings(keys)
	f.b = append(f.b, '{')
	for i, mk := range keys {
		if i > 0 {
			f.b = append(f.b, ',')
		}
		f.b = appendString(f.b, mk)
		f.b = append(f.b, ':')
		f.b = appendValue(f.b, m[mk])
	}
	f.b = append(f.b, '}')
}

// appendFloat formats v as encoding/json does; NaN and ±Inf, which JSON
// cannot hold, become 0 (MapCall never produces them).
func appendFloat(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, '0')
	}
	format := byte('f')
	if abs := math.Abs(v); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, v, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9, as encoding/json does
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

func (t *TraceBody) appendJSON(b []byte) []byte {
	f := fields{b: append(b, '{'), first: true}
	f.strAlways("id", t.ID)
	f.strAlways("timestamp", t.Timestamp)
	f.str("name", t.Name)
	f.str("userId", t.UserID)
	f.str("sessionId", t.SessionID)
	f.raw("input", t.Input)
	f.raw("output", t.Output)
	f.raw("metadata", t.Metadata)
	f.strings("tags", t.Tags)
	f.str("environment", t.Environment)
	f.str("release", t.Release)
	return append(f.b, '}')
}

func (g *GenerationBody) appendJSON(b []byte) []byte {
	f := fields{b: append(b, '{'), first: true}
	f.strAlways("id", g.ID)
	f.strAlways("traceId", g.TraceID)
	f.str("name", g.Name)
	f.strAlways("startTime", g.StartTime)
	f.str("endTime", g.EndTime)
	f.str("completionStartTime", g.CompletionStartTime)
	f.str("model", g.Model)
	f.raw("modelParameters", g.ModelParameters)
	f.raw("input", g.Input)
	f.raw("output", g.Output)
	f.raw("metadata", g.Metadata)
	f.ints("usageDetails", g.UsageDetails)
	f.floats("costDetails", g.CostDetails)
	f.str("level", g.Level)
	f.str("statusMessage", g.StatusMessage)
	f.str("environment", g.Environment)
	return append(f.b, '}')
}

// AppendJSON appends the event as JSON.
func (e *Event) AppendJSON(b []byte) []byte {
	f := fields{b: append(b, '{'), first: true}
	f.strAlways("id", e.ID)
	f.strAlways("type", e.Type)
	f.strAlways("timestamp", e.Timestamp)
	f.key("body")
	switch body := e.Body.(type) {
	case *TraceBody:
		f.b = body.appendJSON(f.b)
	case *GenerationBody:
		f.b = body.appendJSON(f.b)
	default:
		raw, err := json.Marshal(body)
		if err != nil {
			raw = []byte("{}")
		}
		f.b = append(f.b, raw...)
	}
	return append(f.b, '}')
}

// callEvents writes a call's trace-create and generation-create events
// straight from the call, byte for byte as MapCall's events' AppendJSON
// (TestCallEventsMatchMapCall), without building them first: no event
// structs, usage maps or time strings per call, and the values both
// events share (times, name, input, output, metadata) are worked out once.
// It is the ingestion transport's hot path.
type callEvents struct {
	c              *schema.Call
	o              *MapOptions
	traceID, name  string
	input, output  json.RawMessage
	meta           json.RawMessage
	start, end     []byte // JSON strings, quoted
	first          []byte // completionStartTime, quoted; nil: none
	ids            string // trace envelope id, then generation envelope id
	times          [3][40]byte
	statusMessage  string
	failed, costOK bool
}

func (e *callEvents) reset(c *schema.Call, o *MapOptions) {
	*e = callEvents{c: c, o: o, traceID: TraceID(c), name: Name(c)}
	e.input = field(c.Input, c.InputText, o.MaxFieldBytes)
	e.output = field(c.Output, c.OutputText, o.MaxFieldBytes)
	e.meta = metadata(c)
	e.start = appendTS(e.times[0][:0], c.StartTime)
	e.end = appendTS(e.times[1][:0], c.EndTime)
	if c.FirstTokenTime != nil {
		e.first = appendTS(e.times[2][:0], *c.FirstTokenTime)
	}
	var ids [72]byte
	appendEnvelopeID(ids[:0], c.ID, TypeTraceCreate)
	appendEnvelopeID(ids[36:36], c.ID, TypeGenerationCreate)
	e.ids = string(ids[:])
	e.costOK = c.CostUSD != nil && *c.CostUSD >= 0 && !math.IsInf(*c.CostUSD, 0)
	if e.failed = Failed(c); e.failed {
		e.statusMessage = c.Error
		if e.statusMessage == "" {
			e.statusMessage = "HTTP " + strconv.Itoa(c.Status)
		}
	}
}

// appendTS appends t as ts formats it, quoted; a zero time is "".
func appendTS(b []byte, t time.Time) []byte {
	b = append(b, '"')
	if !t.IsZero() {
		b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z")
	}
	return append(b, '"')
}

// appendEnvelopeID appends EnvelopeID(callID, typ).
func appendEnvelopeID(b []byte, callID, typ string) []byte {
	var kb [128]byte
	k := append(append(append(kb[:0], typ...), 0), callID...)
	h := sha256.Sum256(k)
	var hx [32]byte
	hex.Encode(hx[:], h[:16])
	b = append(b, hx[0:8]...)
	b = append(append(b, '-'), hx[8:12]...)
	b = append(append(b, '-'), hx[12:16]...)
	b = append(append(b, '-'), hx[16:20]...)
	return append(append(b, '-'), hx[20:32]...)
}

// envelope opens an event: its id, type and timestamp, then "body":.
func (e *callEvents) envelope(b []byte, id, typ string) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, id...) // hex and dashes: nothing to escape
	b = append(b, `","type":"`...)
	b = append(b, typ...)
	b = append(b, `","timestamp":`...)
	b = append(b, e.start...)
	return append(b, `,"body":`...)
}

// id is the envelope id of event k (0: trace, 1: generation).
func (e *callEvents) id(k int) string { return e.ids[36*k : 36*k+36] }

// typ is the type of event k.
func (e *callEvents) typ(k int) string {
	if k == 0 {
		return TypeTraceCreate
	}
	return TypeGenerationCreate
}

// append appends event k (0: trace, 1: generation).
func (e *callEvents) append(b []byte, k int) []byte {
	if k == 0 {
		return e.appendTrace(b)
	}
	return e.appendGeneration(b)
}

// timeField appends a quoted time that is not "" under key k.
func (f *fields) timeField(k string, quoted []byte) {
	if len(quoted) > 2 {
		f.key(k)
		f.b = append(f.b, quoted...)
	}
}

// open starts event k: its envelope and the opening of its body.
func (e *callEvents) open(b []byte, k int) fields {
	return fields{b: append(e.envelope(b, e.id(k), e.typ(k)), '{'), first: true}
}

func (e *callEvents) appendTrace(b []byte) []byte {
	c, f := e.c, e.open(b, 0)
	f.strAlways("id", e.traceID)
	f.key("timestamp")
	f.b = append(f.b, e.start...)
	f.str("name", e.name)
	f.str("userId", c.UserID)
	f.str("sessionId", c.SessionID)
	f.raw("input", e.input)
	f.raw("output", e.output)
	f.raw("metadata", e.meta)
	if len(c.Tags) > 0 {
		f.strings("tags", tags(c.Tags))
	}
	f.str("environment", e.o.Environment)
	f.str("release", e.o.Release)
	return append(f.b, "}}"...)
}

func (e *callEvents) appendGeneration(b []byte) []byte {
	c, f := e.c, e.open(b, 1)
	f.strAlways("id", c.ID)
	f.strAlways("traceId", e.traceID)
	f.str("name", e.name)
	f.key("startTime")
	f.b = append(f.b, e.start...)
	f.timeField("endTime", e.end)
	f.timeField("completionStartTime", e.first)
	f.str("model", c.Model)
	f.raw("modelParameters", modelParameters(c.ModelParameters))
	f.raw("input", e.input)
	f.raw("output", e.output)
	f.raw("metadata", e.meta)
	if c.InputTokens >= 0 || c.OutputTokens >= 0 || c.TotalTokens >= 0 { // usage(c), keys sorted
		f.key("usageDetails")
		u := fields{b: append(f.b, '{'), first: true}
		for _, n := range [3]struct {
			k string
			v int64
		}{{"input", c.InputTokens}, {"output", c.OutputTokens}, {"total", c.TotalTokens}} {
			if n.v >= 0 {
				u.key(n.k)
				u.b = strconv.AppendInt(u.b, n.v, 10)
			}
		}
		f.b = append(u.b, '}')
	}
	if e.costOK {
		f.key("costDetails")
		f.b = append(appendFloat(append(f.b, `{"total":`...), *c.CostUSD), '}')
	}
	if e.failed {
		f.str("level", "ERROR")
		f.str("statusMessage", e.statusMessage)
	}
	f.str("environment", e.o.Environment)
	return append(f.b, "}}"...)
}
