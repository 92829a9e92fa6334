package langfuse

import (
	"encoding/json"
	"math"
	"sort"
	"strconv"

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

func (f *fields) ints(k string, m map[string]int64) {
	if len(m) == 0 {
		return
	}
	f.key(k)
	keys := make([]string, 0, len(m))
	for mk := range m {
		keys = append(keys, mk)
	}
	sort.Strings(keys) // as json.Marshal does
	f.b = append(f.b, '{')
	for i, mk := range keys {
		if i > 0 {
			f.b = append(f.b, ',')
		}
		f.b = appendString(f.b, mk)
		f.b = append(f.b, ':')
		f.b = strconv.AppendInt(f.b, m[mk], 10)
	}
	f.b = append(f.b, '}')
}

func (f *fields) floats(k string, m map[string]float64) {
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
		f.b = appendFloat(f.b, m[mk])
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
