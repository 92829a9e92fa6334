package schema

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendCall appends c's JSON encoding to buf. The result decodes to the same
// value as json.Marshal(c) (TestAppendCallMatchesMarshal), without
// encoding/json's reflection and re-validation of raw values: every raw
// value in a Call is valid JSON already (built by the normalizer or
// validated by Decode), so it is copied as it is, unless it spans lines
// (appendOneLine): a call is always one line, an item of a record batch.
func AppendCall(buf []byte, c *Call) []byte {
	buf = appendString(buf, `{"id":`, c.ID)
	buf = appendString(buf, `,"trace_id":`, c.TraceID)
	if c.SessionID != "" {
		buf = appendString(buf, `,"session_id":`, c.SessionID)
	}
	buf = appendTimeField(buf, `,"start_time":`, c.StartTime)
	buf = appendTimeField(buf, `,"end_time":`, c.EndTime)
	if c.FirstTokenTime != nil {
		buf = appendTimeField(buf, `,"first_token_time":`, *c.FirstTokenTime)
	}
	buf = appendInt(buf, `,"latency_ms":`, c.LatencyMS)
	if c.TTFTMS != nil {
		buf = appendInt(buf, `,"ttft_ms":`, *c.TTFTMS)
	}
	buf = appendString(buf, `,"endpoint":`, c.Endpoint)
	buf = appendString(buf, `,"kind":`, c.Kind)
	buf = appendString(buf, `,"model":`, c.Model)
	buf = appendOptString(buf, `,"instance":`, c.Instance)
	buf = appendString(buf, `,"user_id":`, c.UserID)
	buf = appendString(buf, `,"user_source":`, c.UserSource)
	buf = appendOptString(buf, `,"api_key_hash":`, c.APIKeyHash)
	buf = appendOptString(buf, `,"api_key_prefix":`, c.APIKeyPrefix)
	if c.Stream {
		buf = append(buf, `,"stream":true`...)
	}
	buf = appendInt(buf, `,"status":`, int64(c.Status))
	buf = appendOptString(buf, `,"error":`, c.Error)
	buf = appendOptString(buf, `,"finish_reason":`, c.FinishReason)
	buf = appendOptString(buf, `,"input_text":`, c.InputText)
	buf = appendOptString(buf, `,"output_text":`, c.OutputText)
	buf = appendRaw(buf, `,"input":`, c.Input)
	buf = appendRaw(buf, `,"output":`, c.Output)
	buf = appendRawMap(buf, `,"model_parameters":`, c.ModelParameters)
	buf = appendInt(buf, `,"input_tokens":`, c.InputTokens)
	buf = appendInt(buf, `,"output_tokens":`, c.OutputTokens)
	buf = appendInt(buf, `,"total_tokens":`, c.TotalTokens)
	buf = appendString(buf, `,"usage_source":`, c.UsageSource)
	if c.CostUSD != nil {
		buf = append(buf, `,"cost_usd":`...)
		buf = appendFloat(buf, *c.CostUSD)
	}
	buf = appendRawMap(buf, `,"metadata":`, c.Metadata)
	buf = appendStrings(buf, `,"tags":`, c.Tags)
	buf = appendString(buf, `,"source":`, c.Source)
	buf = appendOptString(buf, `,"batch_id":`, c.BatchID)
	buf = appendCapture(buf, c.Capture)
	return append(buf, '}')
}

// AppendEvent appends ev's JSON encoding to buf; it decodes to the same value
// as json.Marshal(ev) (TestAppendEventMatchesMarshal). Raw values are copied
// as they are, so ev must hold valid JSON in them (schema.Decode ensures it).
func AppendEvent(buf []byte, ev *Event) []byte {
	buf = appendString(buf, `{"id":`, ev.ID)
	buf = appendOptString(buf, `,"trace_id":`, ev.TraceID)
	buf = appendOptString(buf, `,"session_id":`, ev.SessionID)
	buf = appendTimeField(buf, `,"start_time":`, ev.StartTime)
	if ev.EndTime != nil {
		buf = appendTimeField(buf, `,"end_time":`, *ev.EndTime)
	}
	if ev.FirstTokenTime != nil {
		buf = appendTimeField(buf, `,"first_token_time":`, *ev.FirstTokenTime)
	}
	buf = appendString(buf, `,"endpoint":`, ev.Endpoint)
	buf = appendString(buf, `,"model":`, ev.Model)
	buf = appendOptString(buf, `,"instance":`, ev.Instance)
	buf = appendOptString(buf, `,"user":`, ev.User)
	buf = appendOptString(buf, `,"api_key":`, ev.APIKey)
	buf = appendOptString(buf, `,"api_key_hash":`, ev.APIKeyHash)
	buf = appendOptString(buf, `,"api_key_prefix":`, ev.APIKeyPrefix)
	buf = appendRaw(buf, `,"request":`, ev.Request)
	buf = appendRaw(buf, `,"response":`, ev.Response)
	if ev.Stream {
		buf = append(buf, `,"stream":true`...)
	}
	if ev.Status != 0 {
		buf = appendInt(buf, `,"status":`, int64(ev.Status))
	}
	buf = appendOptString(buf, `,"error":`, ev.Error)
	if u := ev.Usage; u != nil {
		buf = append(buf, `,"usage":{`...)
		first := true
		for _, f := range [...]struct {
			key string
			v   *int64
		}{{`"prompt_tokens":`, u.PromptTokens}, {`"completion_tokens":`, u.CompletionTokens}, {`"total_tokens":`, u.TotalTokens}} {
			if f.v == nil {
				continue
			}
			if !first {
				buf = append(buf, ',')
			}
			first = false
			buf = strconv.AppendInt(append(buf, f.key...), *f.v, 10)
		}
		buf = append(buf, '}')
	}
	buf = appendRawMap(buf, `,"metadata":`, ev.Metadata)
	buf = appendStrings(buf, `,"tags":`, ev.Tags)
	buf = appendOptString(buf, `,"source":`, ev.Source)
	buf = appendOptString(buf, `,"batch_id":`, ev.BatchID)
	if ev.RequestTruncated {
		buf = append(buf, `,"request_truncated":true`...)
	}
	buf = appendCapture(buf, ev.Capture)
	return append(buf, '}')
}

func appendCapture(buf []byte, c *Capture) []byte {
	if c == nil {
		return buf
	}
	buf = appendString(buf, `,"capture":{"mode":`, c.Mode)
	buf = appendOptString(buf, `,"mask_set":`, c.MaskSet)
	if c.Counted {
		buf = append(buf, `,"counted":true`...)
	}
	return append(buf, '}')
}

func appendStrings(buf []byte, key string, list []string) []byte {
	if len(list) == 0 {
		return buf
	}
	buf = append(buf, key...)
	buf = append(buf, '[')
	for i, t := range list {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = AppendJSONString(buf, t)
	}
	return append(buf, ']')
}

func appendOptString(buf []byte, key, s string) []byte {
	if s == "" {
		return buf
	}
	return appendString(buf, key, s)
}

// appendString appends key and s as a JSON string.
func appendString(buf []byte, key, s string) []byte { return AppendJSONString(append(buf, key...), s) }

// appendInt appends key and v.
func appendInt(buf []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(buf, key...), v, 10)
}

// appendTimeField appends key and t as appendTime writes it.
func appendTimeField(buf []byte, key string, t time.Time) []byte {
	return appendTime(append(buf, key...), t)
}

func appendRaw(buf []byte, key string, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return buf
	}
	return appendOneLine(append(buf, key...), raw)
}

// appendOneLine appends a raw JSON value without its line breaks, so that an
// event is one line of NDJSON (the archive's objects, record batches):
// surrounding white space is dropped (a body's trailing newline), and a
// value that still spans lines is compacted, as json.Marshal would write
// it. Values on one line, nearly all, are copied as they are.
func appendOneLine(buf, raw []byte) []byte {
	if bytes.IndexByte(raw, '\n') < 0 {
		return append(buf, raw...)
	}
	raw = bytes.Trim(raw, " \t\r\n")
	if bytes.IndexByte(raw, '\n') < 0 {
		return append(buf, raw...)
	}
	b := bytes.NewBuffer(buf)
	if json.Compact(b, raw) != nil {
		return append(buf, raw...) // not JSON: Validate's business
	}
	return b.Bytes()
}

func appendRawMap(buf []byte, key string, m map[string]json.RawMessage) []byte {
	if len(m) == 0 {
		return buf
	}
	var small [16]string // most maps here (model parameters, metadata) are small: no allocation
	keys := small[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	buf = append(buf, key...)
	buf = append(buf, '{')
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = AppendJSONString(buf, k)
		buf = append(buf, ':')
		v := m[k]
		if len(v) == 0 {
			v = json.RawMessage("null")
		}
		buf = appendOneLine(buf, v)
	}
	return append(buf, '}')
}

func appendTime(buf []byte, t time.Time) []byte {
	buf = append(buf, '"')
	buf = t.AppendFormat(buf, time.RFC3339Nano)
	return append(buf, '"')
}

// appendFloat formats like encoding/json.
func appendFloat(buf []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(buf, "null"...)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	start := len(buf)
	buf = strconv.AppendFloat(buf, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(buf) - start
		if n >= 4 && buf[len(buf)-4] == 'e' && buf[len(buf)-3] == '-' && buf[len(buf)-2] == '0' {
			buf[len(buf)-2] = buf[len(buf)-1]
			buf = buf[:len(buf)-1]
		}
	}
	return buf
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string, escaping like encoding/json
// (HTML characters included; invalid UTF-8 becomes U+FFFD).
func AppendJSONString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		// Plain ASCII, the bulk of any text, is skipped 8 bytes at a time.
		for i+8 <= len(s) && !needsEscape(load64(s, i)) {
			i += 8
		}
		if i >= len(s) {
			break
		}
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch b {
			case '"', '\\':
				buf = append(buf, '\\', b)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

// load64 reads s[i:i+8] as a little-endian word (the compiler merges the
// byte loads into one).
func load64(s string, i int) uint64 {
	s = s[i : i+8]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// needsEscape reports whether any of the 8 bytes in x is one AppendJSONString
// must look at: a control character, '"', '\\', '<', '>', '&' or a byte of a
// multi-byte (or invalid) UTF-8 sequence. Each term is the exact "has a zero
// byte" test; x&lanes80 catches bytes >= 0x80, and with them every case where
// the "less than 0x20" term could be wrong.
func needsEscape(x uint64) bool {
	zero := func(v uint64) uint64 { return (v - lanes01) &^ v }
	q, bs := x^(lanes01*'"'), x^(lanes01*'\\')
	lt, gt, amp := x^(lanes01*'<'), x^(lanes01*'>'), x^(lanes01*'&')
	return (zero(q)|zero(bs)|zero(lt)|zero(gt)|zero(amp)|(x-lanes01*0x20)&^x|x)&lanes80 != 0
}
