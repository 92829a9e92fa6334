package schema

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// DecodeCall decodes one normalized call as AppendCall writes it: the one
// decoder of the records on CALLPIPE_NORMALIZED, used by every sink. A
// record without an id or a start time is not a call.
//
// It gives the same Call as encoding/json, and the same verdict
// (TestDecodeCallMatchesEncodingJSON, FuzzDecodeCallMatchesUnmarshal): the
// records AppendCall writes are bound by hand in one pass (bindCall), and
// anything that pass does not handle exactly as encoding/json would (keys
// with escapes or that match a field but for case, a field given twice,
// times with an offset, invalid UTF-8, a value of the wrong type, bad JSON)
// is decoded again by encoding/json, which also words the error. Decoding
// is most of a sink's own work per call.
//
// The Call's strings and raw values point into data, which must not change
// while the Call is in use (a JetStream message's data never does).
func DecodeCall(data []byte) (Call, error) {
	var c Call
	if !bindCall(data, &c) {
		var full Call // its own variable: only this path moves it to the heap
		if err := json.Unmarshal(data, &full); err != nil {
			return full, fmt.Errorf("not a normalized call: %w", err)
		}
		c = full
	}
	if c.ID == "" {
		return c, errors.New("not a normalized call: missing id")
	}
	if c.StartTime.IsZero() {
		return c, errors.New("not a normalized call: missing start_time")
	}
	return c, nil
}

var (
	callFields    = FieldsOf("id trace_id session_id start_time end_time first_token_time latency_ms ttft_ms endpoint kind model instance user_id user_source api_key_hash api_key_prefix stream status error finish_reason input_text output_text input output model_parameters input_tokens output_tokens total_tokens usage_source cost_usd metadata tags source batch_id capture")
	captureFields = FieldsOf("mode mask_set counted")
)

// bindCall binds data into c and reports whether it did so exactly as
// encoding/json would; false leaves c partly filled.
func bindCall(data []byte, c *Call) bool {
	d := NewBinder(data)
	m, ok := d.Object(0)
	if !ok {
		return false
	}
	var seen uint64
	for {
		key, from, ok := m.Next()
		if !ok {
			break
		}
		var to int
		switch string(key) {
		case "id":
			d.Seen(&seen, 0)
			to = d.Str(from, &c.ID)
		case "trace_id":
			d.Seen(&seen, 1)
			to = d.Str(from, &c.TraceID)
		case "session_id":
			d.Seen(&seen, 2)
			to = d.Str(from, &c.SessionID)
		case "start_time":
			d.Seen(&seen, 3)
			to = d.Time(from, &c.StartTime)
		case "end_time":
			d.Seen(&seen, 4)
			to = d.Time(from, &c.EndTime)
		case "first_token_time":
			d.Seen(&seen, 5)
			to = d.TimePtr(from, &c.FirstTokenTime)
		case "latency_ms":
			d.Seen(&seen, 6)
			to = d.Int64(from, &c.LatencyMS)
		case "ttft_ms":
			d.Seen(&seen, 7)
			to = d.Int64Ptr(from, &c.TTFTMS)
		case "endpoint":
			d.Seen(&seen, 8)
			to = d.Str(from, &c.Endpoint)
		case "kind":
			d.Seen(&seen, 9)
			to = d.Str(from, &c.Kind)
		case "model":
			d.Seen(&seen, 10)
			to = d.Str(from, &c.Model)
		case "instance":
			d.Seen(&seen, 11)
			to = d.Str(from, &c.Instance)
		case "user_id":
			d.Seen(&seen, 12)
			to = d.Str(from, &c.UserID)
		case "user_source":
			d.Seen(&seen, 13)
			to = d.Str(from, &c.UserSource)
		case "api_key_hash":
			d.Seen(&seen, 14)
			to = d.Str(from, &c.APIKeyHash)
		case "api_key_prefix":
			d.Seen(&seen, 15)
			to = d.Str(from, &c.APIKeyPrefix)
		case "stream":
			d.Seen(&seen, 16)
			to = d.Bool(from, &c.Stream)
		case "status":
			d.Seen(&seen, 17)
			to = d.Int(from, &c.Status)
		case "error":
			d.Seen(&seen, 18)
			to = d.Str(from, &c.Error)
		case "finish_reason":
			d.Seen(&seen, 19)
			to = d.Str(from, &c.FinishReason)
		case "input_text":
			d.Seen(&seen, 20)
			to = d.Str(from, &c.InputText)
		case "output_text":
			d.Seen(&seen, 21)
			to = d.Str(from, &c.OutputText)
		case "input":
			d.Seen(&seen, 22)
			to = d.ValidRaw(from, &c.Input)
		case "output":
			d.Seen(&seen, 23)
			to = d.ValidRaw(from, &c.Output)
		case "model_parameters":
			d.Seen(&seen, 24)
			to = d.RawMap(from, &c.ModelParameters)
		case "input_tokens":
			d.Seen(&seen, 25)
			to = d.Int64(from, &c.InputTokens)
		case "output_tokens":
			d.Seen(&seen, 26)
			to = d.Int64(from, &c.OutputTokens)
		case "total_tokens":
			d.Seen(&seen, 27)
			to = d.Int64(from, &c.TotalTokens)
		case "usage_source":
			d.Seen(&seen, 28)
			to = d.Str(from, &c.UsageSource)
		case "cost_usd":
			d.Seen(&seen, 29)
			to = d.FloatPtr(from, &c.CostUSD)
		case "metadata":
			d.Seen(&seen, 30)
			to = d.RawMap(from, &c.Metadata)
		case "tags":
			d.Seen(&seen, 31)
			to = d.Strings(from, &c.Tags)
		case "source":
			d.Seen(&seen, 32)
			to = d.Str(from, &c.Source)
		case "batch_id":
			d.Seen(&seen, 33)
			to = d.Str(from, &c.BatchID)
		case "capture":
			d.Seen(&seen, 34)
			to = bindCapture(&d, from, &c.Capture)
		default:
			d.Unknown(key, callFields)
			to = d.ValidRaw(from, nil)
		}
		m.At(to)
	}
	return !d.Failed() && d.AtEnd(m.End())
}

// bindCapture binds a capture object, or null, into *dst.
func bindCapture(d *Binder, from int, dst **Capture) int {
	m, ok := d.Nested(from)
	if !ok {
		if !d.Failed() { // null
			*dst = nil
		}
		return d.Skip(from)
	}
	if *dst == nil {
		*dst = new(Capture)
	}
	c := *dst
	var seen uint64
	for {
		key, from, ok := m.Next()
		if !ok {
			break
		}
		var to int
		switch string(key) {
		case "mode":
			d.Seen(&seen, 0)
			to = d.Str(from, &c.Mode)
		case "mask_set":
			d.Seen(&seen, 1)
			to = d.Str(from, &c.MaskSet)
		case "counted":
			d.Seen(&seen, 2)
			to = d.Bool(from, &c.Counted)
		default:
			d.Unknown(key, captureFields)
			to = d.ValidRaw(from, nil)
		}
		m.At(to)
	}
	return m.End()
}

// parseTime parses an RFC 3339 time in UTC ("Z"), as encoding/json does; any
// other form (an offset, escapes) makes the binder give up.
func (d *Binder) parseTime(from, to int) time.Time {
	var t time.Time
	raw := d.data[from:to]
	if len(raw) < 3 || raw[0] != '"' || raw[len(raw)-2] != 'Z' || raw[len(raw)-1] != '"' {
		d.failed = true
		return t
	}
	for _, b := range raw[1 : len(raw)-1] {
		if b == '\\' || b < 0x20 {
			d.failed = true
			return t
		}
	}
	if err := t.UnmarshalText(raw[1 : len(raw)-1]); err != nil {
		d.failed = true
	}
	return t
}
