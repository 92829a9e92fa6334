package schema

import (
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
// validated by Decode), so it is copied as it is.
func AppendCall(buf []byte, c *Call) []byte {
	buf = append(buf, `{"id":`...)
	buf = AppendJSONString(buf, c.ID)
	buf = append(buf, `,"trace_id":`...)
	buf = AppendJSONString(buf, c.TraceID)
	if c.SessionID != "" {
		buf = append(buf, `,"session_id":`...)
		buf = AppendJSONString(buf, c.SessionID)
	}
	buf = append(buf, `,"start_time":`...)
	buf = appendTime(buf, c.StartTime)
	buf = append(buf, `,"end_time":`...)
	buf = appendTime(buf, c.EndTime)
	if c.FirstTokenTime != nil {
		buf = append(buf, `,"first_token_time":`...)
		buf = appendTime(buf, *c.FirstTokenTime)
	}
	buf = append(buf, `,"latency_ms":`...)
	buf = strconv.AppendInt(buf, c.LatencyMS, 10)
	if c.TTFTMS != nil {
		buf = append(buf, `,"ttft_ms":`...)
		buf = strconv.AppendInt(buf, *c.TTFTMS, 10)
	}
	buf = append(buf, `,"endpoint":`...)
	buf = AppendJSONString(buf, c.Endpoint)
	buf = append(buf, `,"kind":`...)
	buf = AppendJSONString(buf, c.Kind)
	buf = append(buf, `,"model":`...)
	buf = AppendJSONString(buf, c.Model)
	buf = appendOptString(buf, `,"instance":`, c.Instance)
	buf = append(buf, `,"user_id":`...)
	buf = AppendJSONString(buf, c.UserID)
	buf = append(buf, `,"user_source":`...)
	buf = AppendJSONString(buf, c.UserSource)
	buf = appendOptString(buf, `,"api_key_hash":`, c.APIKeyHash)
	buf = appendOptString(buf, `,"api_key_prefix":`, c.APIKeyPrefix)
	if c.Stream {
		buf = append(buf, `,"stream":true`...)
	}
	buf = append(buf, `,"status":`...)
	buf = strconv.AppendInt(buf, int64(c.Status), 10)
	buf = appendOptString(buf, `,"error":`, c.Error)
	buf = appendOptString(buf, `,"finish_reason":`, c.FinishReason)
	buf = appendOptString(buf, `,"input_text":`, c.InputText)
	buf = appendOptString(buf, `,"output_text":`, c.OutputText)
	buf = appendRaw(buf, `,"input":`, c.Input)
	buf = appendRaw(buf, `,"output":`, c.Output)
	buf = appendRawMap(buf, `,"model_parameters":`, c.ModelParameters)
	buf = append(buf, `,"input_tokens":`...)
	buf = strconv.AppendInt(buf, c.InputTokens, 10)
	buf = append(buf, `,"output_tokens":`...)
	buf = strconv.AppendInt(buf, c.OutputTokens, 10)
	buf = append(buf, `,"total_tokens":`...)
	buf = strconv.AppendInt(buf, c.TotalTokens, 10)
	buf = append(buf, `,"usage_source":`...)
	buf = AppendJSONString(buf, c.UsageSource)
	if c.CostUSD != nil {
		buf = append(buf, `,"cost_usd":`...)
		buf = appendFloat(buf, *c.CostUSD)
	}
	buf = appendRawMap(buf, `,"metadata":`, c.Metadata)
	buf = appendStrings(buf, `,"tags":`, c.Tags)
	buf = append(buf, `,"source":`...)
	buf = AppendJSONString(buf, c.Source)
	buf = appendOptString(buf, `,"batch_id":`, c.BatchID)
	buf = appendCapture(buf, c.Capture)
	return append(buf, '}')
}

// AppendEvent appends ev's JSON encoding to buf; it decodes to the same value
// as json.Marshal(ev) (TestAppendEventMatchesMarshal). Raw values are copied
// as they are, so ev must hold valid JSON in them (schema.Decode ensures it).
func AppendEvent(buf []byte, ev *Event) []byte {
	buf = append(buf, `{"id":`...)
	buf = AppendJSONString(buf, ev.ID)
	buf = appendOptString(buf, `,"trace_id":`, ev.TraceID)
	buf = appendOptString(buf, `,"session_id":`, ev.SessionID)
	buf = append(buf, `,"start_time":`...)
	buf = appendTime(buf, ev.StartTime)
	if ev.EndTime != nil {
		buf = append(buf, `,"end_time":`...)
		buf = appendTime(buf, *ev.EndTime)
	}
	if ev.FirstTokenTime != nil {
		buf = append(buf, `,"first_token_time":`...)
		buf = appendTime(buf, *ev.FirstTokenTime)
	}
	buf = append(buf, `,"endpoint":`...)
	buf = AppendJSONString(buf, ev.Endpoint)
	buf = append(buf, `,"model":`...)
	buf = AppendJSONString(buf, ev.Model)
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
		buf = append(buf, `,"status":`...)
		buf = strconv.AppendInt(buf, int64(ev.Status), 10)
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
	buf = append(buf, `,"capture":{"mode":`...)
	buf = AppendJSONString(buf, c.Mode)
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
	return AppendJSONString(append(buf, key...), s)
}

func appendRaw(buf []byte, key string, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return buf
	}
	return append(append(buf, key...), raw...)
}

func appendRawMap(buf []byte, key string, m map[string]json.RawMessage) []byte {
	if len(m) == 0 {
		return buf
	}
	keys := make([]string, 0, len(m))
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
		buf = append(buf, v...)
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
