package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

const minimal = `{"id":"call-1","start_time":"2024-05-01T12:00:00Z","endpoint":"/v1/chat/completions","model":"m"`

// ev builds an event from the minimal one plus extra members.
func ev(extra string) []byte {
	if extra == "" {
		return []byte(minimal + "}")
	}
	return []byte(minimal + "," + extra + "}")
}

func TestDecodeErrorMessages(t *testing.T) {
	long := strings.Repeat("x", 129)
	tests := []struct {
		in   []byte
		want string
	}{
		{ev(`"usage":{"prompt_tokens":"12"}`), `usage.prompt_tokens: must be a non-negative integer, got string`},
		{ev(`"usage":{"prompt_tokens":-3}`), `usage.prompt_tokens: must be a non-negative integer, got -3`},
		{ev(`"usage":{"prompt_tokens":1.5}`), `usage.prompt_tokens: must be a non-negative integer, got 1.5`},
		{ev(`"usage":{"total_tokens":1e999}`), `usage.total_tokens: must be a non-negative integer at most 9223372036854775807, got 1e999`},
		{ev(`"tags":["a","b",3]`), `tags[2]: must be a string, got number`},
		{ev(`"tags":"a"`), `tags: must be an array of strings, got string`},
		{ev(`"end_time":"2024-05-01T11:00:00Z"`), `end_time: before start_time`},
		{ev(`"first_token_time":"2024-05-01T11:00:00Z"`), `first_token_time: before start_time`},
		{ev(`"end_time":"2024-05-01T12:00:01Z","first_token_time":"2024-05-01T12:00:02Z"`), `first_token_time: after end_time`},
		{[]byte(`{"start_time":"2024-05-01T12:00:00Z","endpoint":"/v1/x","model":"m"}`), `id: required`},
		{[]byte(`{"id":"` + long + `","start_time":"2024-05-01T12:00:00Z","endpoint":"/v1/x","model":"m"}`), `id: 129 characters, limit 128`},
		{ev(`"status":600`), `status: must be an integer between 100 and 599, got 600`},
		{ev(`"status":"200"`), `status: must be an integer between 100 and 599, got string`},
		{ev(`"source":"offline"`), `source: must be "online" or "batch", got "offline"`},
		{ev(`"batch_id":"b1"`), `batch_id: allowed only when source is "batch"`},
		{ev(`"temprature":0.2`), `temprature: unknown field`},
		{ev(`"model":"m2"`), `model: duplicate key`},
		{ev(`"request":{"t":1e999}`), `request: number 1e999 is out of range (overflows float64)`},
		{ev(`"metadata":{"k":[-1E400]}`), `metadata.k: number -1E400 is out of range (overflows float64)`},
		{ev(`"stream":1`), `stream: must be a boolean, got number`},
		{[]byte(`{"id":"c","start_time":"2024-05-01T12:00:00","endpoint":"/v1/x","model":"m"}`), `start_time: missing UTC offset (Z or ±hh:mm), got "2024-05-01T12:00:00"`},
		{[]byte(`{"id":"c","start_time":"2024-02-30T12:00:00Z","endpoint":"/v1/x","model":"m"}`), `start_time: invalid date, got "2024-02-30T12:00:00Z"`},
		{[]byte(`{"id":"c","start_time":"0001-01-01T00:00:00Z","endpoint":"/v1/x","model":"m"}`), `start_time: is the zero time, which means absent, got "0001-01-01T00:00:00Z"`},
		{[]byte(`{"id":"c","start_time":"2024-05-01T12:00:00Z","endpoint":"v1/x","model":"m"}`), `endpoint: must start with "/" (must be a request path like /v1/chat/completions), got "v1/x"`},
		{[]byte(`{"id":"c","start_time":"2024-05-01T12:00:00Z","endpoint":"/v1/x?a=1","model":"m"}`), `endpoint: must be a request path like /v1/chat/completions without a query string, got "/v1/x?a=1"`},
		{[]byte(`{"id":"c","start_time":"2024-05-01T12:00:00Z","endpoint":"http://h/v1/x","model":"m"}`), `endpoint: must be a request path like /v1/chat/completions without scheme or host, got "http://h/v1/x"`},
		{[]byte("{\"id\":\"a\xffb\"}"), `(event): invalid UTF-8 at byte offset 8`},
		{[]byte(`[1]`), `(event): must be a JSON object, got array`},
		{[]byte(`null`), `(event): must be a JSON object, got null`},
		{[]byte(``), `(event): invalid JSON at byte offset 0: empty input`},
		{[]byte(`{"id":NaN}`), `(event): invalid JSON at byte offset 6: invalid character 'N'`},
		{[]byte(`{"id":"c"} x`), `(event): invalid JSON at byte offset 11: unexpected data after the top-level value`},
		{[]byte(`{"id":"c"`), `(event): invalid JSON at byte offset 9: unexpected end of input, expected ',' or '}'`},
		{[]byte(`{"id":"c",}`), `(event): invalid JSON at byte offset 10: invalid character '}', expected a string key`},
		{[]byte("{\"id\":\"c\x01\"}"), `(event): invalid JSON at byte offset 8: invalid control character '\x01' in string`},
		{[]byte(`{"id":tru}`), `(event): invalid JSON at byte offset 9: invalid character '}'`},
		{[]byte(`{"id":01}`), `(event): invalid JSON at byte offset 7: invalid character '1', expected ',' or '}'`},
	}
	for _, tt := range tests {
		_, err := Decode(tt.in, DefaultLimits())
		if err == nil || err.Error() != tt.want {
			t.Errorf("Decode(%.80s)\n got  %v\n want %s", tt.in, err, tt.want)
		}
	}
}

func TestDecodeDefaults(t *testing.T) {
	e, err := Decode(ev(""), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if e.TraceID != "call-1" || e.Status != 200 || e.Source != SourceOnline {
		t.Errorf("defaults: trace_id %q status %d source %q", e.TraceID, e.Status, e.Source)
	}
	e, err = Decode(ev(`"trace_id":"t","status":404,"source":"batch"`), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if e.TraceID != "t" || e.Status != 404 || e.Source != SourceBatch {
		t.Errorf("explicit: trace_id %q status %d source %q", e.TraceID, e.Status, e.Source)
	}
}

func TestDecodeValues(t *testing.T) {
	in := ev(`"end_time":"2024-05-01T17:30:01.000000001+05:30","first_token_time":"2024-05-01T12:00:00.5z",` +
		`"usage":{"prompt_tokens":1e3,"completion_tokens":0,"total_tokens":2.50e1},"tags":["a","\u00e9"],` +
		`"metadata":{"k":{"x" : [1, 2]},"n":null},"request":"hi","response":null,"stream":true,"error":"a\"b\\c\n\ud83d\ude80\udc00"`)
	e, err := Decode(in, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if _, off := e.EndTime.Zone(); off != 5*3600+30*60 {
		t.Errorf("end_time offset %d", off)
	}
	if want := time.Date(2024, 5, 1, 12, 0, 1, 1, time.UTC); !e.EndTime.Equal(want) {
		t.Errorf("end_time %v, want %v", e.EndTime, want)
	}
	if e.FirstTokenTime.Location() != time.UTC || e.FirstTokenTime.Nanosecond() != 500000000 {
		t.Errorf("first_token_time %v", e.FirstTokenTime)
	}
	if *e.Usage.PromptTokens != 1000 || *e.Usage.CompletionTokens != 0 || *e.Usage.TotalTokens != 25 {
		t.Errorf("usage %d %d %d", *e.Usage.PromptTokens, *e.Usage.CompletionTokens, *e.Usage.TotalTokens)
	}
	if !slices.Equal(e.Tags, []string{"a", "é"}) {
		t.Errorf("tags %q", e.Tags)
	}
	if string(e.Metadata["k"]) != `{"x" : [1, 2]}` || string(e.Metadata["n"]) != "null" {
		t.Errorf("metadata %s", e.Metadata)
	}
	if string(e.Request) != `"hi"` || e.Response != nil || !e.Stream {
		t.Errorf("request %s response %s stream %v", e.Request, e.Response, e.Stream)
	}
	if e.Error != "a\"b\\c\n🚀\uFFFD" {
		t.Errorf("error %q", e.Error)
	}
	// encoding/json agrees on string contents.
	var std struct{ Error string }
	if err := json.Unmarshal(in, &std); err != nil || std.Error != e.Error {
		t.Errorf("encoding/json error %q (%v), Decode %q", std.Error, err, e.Error)
	}
}

func TestDecodeDoesNotAlias(t *testing.T) {
	in := ev(`"request":{"a":1},"metadata":{"k":"v"},"tags":["t"]`)
	e, err := Decode(in, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	before, _ := json.Marshal(e)
	for i := range in {
		in[i] = 'X'
	}
	after, _ := json.Marshal(e)
	if !bytes.Equal(before, after) {
		t.Errorf("event changed with its input:\n%s\n%s", before, after)
	}
}

// The errors of an event come in schema order whatever the key order.
func TestErrorOrderIsDeterministic(t *testing.T) {
	members := []string{
		`"id":""`, `"start_time":"yesterday"`, `"endpoint":"chat"`, `"tags":[1,"ok",false]`,
		`"status":7`, `"usage":{"total_tokens":-1,"prompt_tokens":-2}`, `"source":"x"`, `"zzz":1`,
	}
	want := []string{"id", "start_time", "endpoint", "model", "status", "usage.total_tokens", "usage.prompt_tokens", "tags[0]", "tags[2]", "source", "zzz"}
	for i := 0; i < 20; i++ {
		perm := slices.Clone(members)
		for j := range perm { // deterministic shuffle
			k := (j*7 + i*3) % len(perm)
			perm[j], perm[k] = perm[k], perm[j]
		}
		_, err := Decode([]byte("{"+strings.Join(perm, ",")+"}"), DefaultLimits())
		if got := FieldPaths(err); !slices.Equal(got, want) {
			t.Fatalf("order %v:\n got  %q\n want %q", perm, got, want)
		}
	}
}

func TestDuplicateKeysRejected(t *testing.T) {
	for _, in := range []string{
		minimal + `,"id":"call-2"}`,
		minimal + `,"usage":{"total_tokens":1,"total_tokens":2}}`,
		minimal + `,"metadata":{"a":1,"a":1}}`,
		minimal + `,"\u006dodel":"m2"}`, // the same key, escaped
	} {
		if _, err := Decode([]byte(in), DefaultLimits()); err == nil {
			t.Errorf("Decode(%s): no error", in)
		} else if !strings.Contains(err.Error(), "duplicate key") {
			t.Errorf("Decode(%s): %v", in, err)
		}
	}
}

func TestErrorCap(t *testing.T) {
	in := ev(`"tags":[` + strings.TrimSuffix(strings.Repeat("1,", 10000), ",") + `]`)
	_, err := Decode(in, DefaultLimits())
	if n := len(FieldPaths(err)); n != maxErrorsPerField {
		t.Errorf("%d errors, want %d", n, maxErrorsPerField)
	}
}

func TestDeepNesting(t *testing.T) {
	deep := func(n int) []byte {
		return ev(`"request":` + strings.Repeat("[", n) + strings.Repeat("]", n))
	}
	if _, err := Decode(deep(maxDepth-1), DefaultLimits()); err != nil {
		t.Errorf("depth %d: %v", maxDepth, err)
	}
	_, err := Decode(deep(maxDepth), DefaultLimits())
	if err == nil || !strings.Contains(err.Error(), "exceeded max nesting depth") {
		t.Errorf("depth %d: %v", maxDepth+1, err)
	}
	// encoding/json has the same limit, so the JSON Schema side agrees.
	var v any
	if json.Unmarshal(deep(maxDepth-1), &v) != nil || json.Unmarshal(deep(maxDepth), &v) == nil {
		t.Errorf("encoding/json's depth limit differs")
	}
}

func TestParseInt(t *testing.T) {
	tests := []struct {
		lit  string
		v    int64
		stat intStatus
	}{
		{"0", 0, intOK}, {"-0", 0, intOK}, {"7", 7, intOK}, {"-7", -7, intOK},
		{"123456789012345678", 123456789012345678, intOK},
		{"9223372036854775807", 9223372036854775807, intOK},
		{"9223372036854775808", 0, intRange},
		{"-9223372036854775808", 0, intRange},
		{"99999999999999999999", 0, intRange},
		{"1.0", 1, intOK}, {"1.5", 0, intFraction}, {"0.0000", 0, intOK},
		{"1e3", 1000, intOK}, {"1E+3", 1000, intOK}, {"12e-1", 0, intFraction}, {"120e-1", 12, intOK},
		{"0.12e2", 12, intOK}, {"1.23e1", 0, intFraction}, {"0e999999999", 0, intOK},
		{"1e999", 0, intRange}, {"1e-999", 0, intFraction}, {"1e99999999999", 0, intRange},
		{"1e-99999999999", 0, intFraction}, {"9.223372036854775807e18", 9223372036854775807, intOK},
		{"9.223372036854775808e18", 0, intRange}, {"100000000000000000000e-2", 1000000000000000000, intOK},
	}
	for _, tt := range tests {
		v, st := parseInt([]byte(tt.lit))
		if v != tt.v || st != tt.stat {
			t.Errorf("parseInt(%s) = %d, %d; want %d, %d", tt.lit, v, st, tt.v, tt.stat)
		}
	}
}

func TestParseTimestamp(t *testing.T) {
	ok := map[string]time.Time{
		"2024-05-01T12:00:00Z":                time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC),
		"2024-05-01t12:00:00z":                time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC),
		"2024-05-01T12:00:00.1Z":              time.Date(2024, 5, 1, 12, 0, 0, 1e8, time.UTC),
		"2024-05-01T12:00:00.123456789123Z":   time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC),
		"2024-05-01T17:30:00+05:30":           time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC),
		"2024-05-01T00:00:00-23:59":           time.Date(2024, 5, 1, 23, 59, 0, 0, time.UTC),
		"2024-02-29T00:00:00+00:00":           time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC),
		"2016-12-31T23:59:60Z":                time.Date(2017, 1, 1, 0, 0, 0, 0, time.UTC),
		"2017-01-01T05:29:60.5+05:30":         time.Date(2017, 1, 1, 0, 0, 0, 5e8, time.UTC),
		"0000-01-01T00:00:00Z":                time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		"9999-12-31T23:59:59.999999999-00:00": time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	}
	for s, want := range ok {
		got, reason := parseTimestamp(s)
		if reason != "" || !got.Equal(want) {
			t.Errorf("parseTimestamp(%q) = %v, %q; want %v", s, got, reason, want)
		}
	}
	for _, s := range []string{
		"", "2024-05-01", "2024-05-01T12:00:00", "2024-05-01 12:00:00Z", "2024-05-01T12:00Z",
		"2024-5-01T12:00:00Z", "2024-05-01T12:00:00.Z", "2024-05-01T12:00:00+0530", "2024-05-01T12:00:00+05",
		"2024-05-01T12:00:00+24:00", "2024-05-01T12:00:00+05:60", "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z",
		"2024-00-01T00:00:00Z", "2024-04-31T00:00:00Z", "2024-05-01T24:00:00Z", "2024-05-01T12:60:00Z",
		"2024-05-01T12:00:60Z", "9999-12-31T23:59:60Z", "0001-01-01T00:00:00Z", "2024-05-01T12:00:00ZZ",
		"+2024-05-01T12:00:00Z", "2024-05-01T12:00:00 Z", "2024-05-01T12:00:00Z ", "２０２４-05-01T12:00:00Z",
	} {
		if got, reason := parseTimestamp(s); reason == "" {
			t.Errorf("parseTimestamp(%q) = %v, want an error", s, got)
		}
	}
}

// Time fields marshal as RFC 3339 with nanoseconds and keep their offset.
func TestMarshalTimes(t *testing.T) {
	e, err := Decode(ev(`"end_time":"2024-05-01T17:30:00.123456789+05:30","first_token_time":"2024-05-01T12:00:00.100Z"`), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"start_time":"2024-05-01T12:00:00Z"`,
		`"end_time":"2024-05-01T17:30:00.123456789+05:30"`,
		`"first_token_time":"2024-05-01T12:00:00.1Z"`,
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("marshalled event lacks %s:\n%s", want, out)
		}
	}
}

func TestValidate(t *testing.T) {
	start := time.Date(2024, 5, 1, 12, 0, 0, 0, time.FixedZone("", 3600))
	end := start.Add(time.Second)
	good := func() *Event {
		return &Event{ID: "c", StartTime: start, EndTime: &end, Endpoint: "/v1/chat/completions", Model: "m"}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("valid event: %v", err)
	}
	neg := int64(-1)
	far := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	odd := start.In(time.FixedZone("", 3601))
	tests := []struct {
		mod  func(*Event)
		want []string
	}{
		{func(e *Event) { e.ID = "" }, []string{"id"}},
		{func(e *Event) { e.ID = strings.Repeat("é", 129) }, []string{"id"}},
		{func(e *Event) { e.ID = "a\xff" }, []string{"id"}},
		{func(e *Event) { e.StartTime = time.Time{} }, []string{"start_time"}},
		{func(e *Event) { e.StartTime = far }, []string{"start_time"}}, // no order check against a bad start
		{func(e *Event) { e.StartTime = odd }, []string{"start_time"}},
		{func(e *Event) { e.EndTime = &far }, []string{"end_time"}},
		{func(e *Event) { t := start.Add(-1); e.EndTime = &t }, []string{"end_time"}},
		{func(e *Event) { t := end.Add(1); e.FirstTokenTime = &t }, []string{"first_token_time"}},
		{func(e *Event) { e.Endpoint = "/a b" }, []string{"endpoint"}},
		{func(e *Event) { e.Model = "" }, []string{"model"}},
		{func(e *Event) { e.APIKeyHash = "abc" }, []string{"api_key_hash"}},
		{func(e *Event) { e.APIKeyPrefix = "12345678" }, []string{"api_key_prefix"}},
		{func(e *Event) { e.Request = json.RawMessage("{") }, []string{"request"}},
		{func(e *Event) { e.Response = json.RawMessage("nul") }, []string{"response"}},
		{func(e *Event) { e.Status = 99 }, []string{"status"}},
		{func(e *Event) { e.Usage = &Usage{CompletionTokens: &neg} }, []string{"usage.completion_tokens"}},
		{func(e *Event) { e.Metadata = map[string]json.RawMessage{"b": json.RawMessage("x"), "a": nil} }, []string{"metadata.a", "metadata.b"}},
		{func(e *Event) { e.Tags = []string{"ok", "\xc0"} }, []string{"tags[1]"}},
		{func(e *Event) { e.Source = "Batch" }, []string{"source"}},
		{func(e *Event) { e.BatchID = "b" }, []string{"batch_id"}},
		{func(e *Event) { e.Source = SourceBatch; e.BatchID = "b" }, nil},
		{func(e *Event) { e.Status = 0; e.Source = ""; e.TraceID = "" }, nil}, // defaults
	}
	for i, tt := range tests {
		e := good()
		tt.mod(e)
		if got := FieldPaths(e.Validate()); !slices.Equal(got, tt.want) {
			t.Errorf("case %d: fields %q, want %q (%v)", i, got, tt.want, e.Validate())
		}
	}
}

func TestFieldPathsAndErrors(t *testing.T) {
	_, err := Decode(ev(`"status":1,"tags":[1]`), DefaultLimits())
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "status" {
		t.Errorf("errors.As first FieldError: %v", fe)
	}
	var ve ValidationError
	if !errors.As(err, &ve) || len(ve) != 2 {
		t.Errorf("errors.As ValidationError: %v", ve)
	}
	if got := err.Error(); got != "status: must be an integer between 100 and 599, got 1; tags[0]: must be a string, got number" {
		t.Errorf("Error() = %q", got)
	}
	wrapped := fmt.Errorf("event 7: %w", errors.Join(err, &FieldError{Field: "x", Reason: "y"}, errors.New("other")))
	if got := FieldPaths(wrapped); !slices.Equal(got, []string{"status", "tags[0]", "x"}) {
		t.Errorf("FieldPaths(wrapped) = %q", got)
	}
	if FieldPaths(nil) != nil || FieldPaths(errors.New("x")) != nil {
		t.Errorf("FieldPaths of non-field errors")
	}
}

func TestAPIKey(t *testing.T) {
	if got := HashAPIKey("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("HashAPIKey(abc) = %s", got)
	}
	key := "xf-" + strings.Repeat("a1B2", 12)
	e := &Event{APIKey: key}
	e.RedactAPIKey()
	if e.APIKey != "" || e.APIKeyHash != HashAPIKey(key) || e.APIKeyPrefix != "xf-a1B2" {
		t.Errorf("RedactAPIKey: %+v", e)
	}
	e.RedactAPIKey() // idempotent: no key, nothing changes
	if e.APIKeyHash != HashAPIKey(key) || e.APIKeyPrefix != "xf-a1B2" {
		t.Errorf("second RedactAPIKey changed the event: %+v", e)
	}
	for key, want := range map[string]string{"abcdefghijklmnop": "abcdefg", "abcd": "ab", "a": "", "日本語の鍵です長い鍵ですよ本当に": "日本語の鍵です"} {
		if got := APIKeyPrefix(key); got != want {
			t.Errorf("APIKeyPrefix(%q) = %q, want %q", key, got, want)
		}
	}
	// A redacted event is valid and carries no key.
	out, err := Decode(ev(`"api_key":"`+key+`"`), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	out.RedactAPIKey()
	if err := out.Validate(); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(out)
	if bytes.Contains(b, []byte(key)) || bytes.Contains(b, []byte(`"api_key"`)) {
		t.Errorf("key in redacted event: %s", b)
	}
}

// benchEvent is a realistic chat completion event of about 1 KB: the full
// chat fixture, compacted.
func benchEvent(b *testing.B) []byte {
	data, err := os.ReadFile("testdata/events/valid_full_chat.json")
	if err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

func BenchmarkDecode(b *testing.B) {
	data := benchEvent(b)
	lim := DefaultLimits()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data, lim); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeParallel: the collector decodes on all cores.
func BenchmarkDecodeParallel(b *testing.B) {
	data := benchEvent(b)
	lim := DefaultLimits()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := Decode(data, lim); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkStdlibUnmarshal is the reference point: encoding/json into Event,
// with none of Decode's checks.
func BenchmarkStdlibUnmarshal(b *testing.B) {
	data := benchEvent(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var e Event
		if err := json.Unmarshal(data, &e); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDecodeSharedPointsIntoData: DecodeShared gives the event Decode gives,
// with its raw values inside data rather than copied, each capped so that
// appending to one never writes into data.
func TestDecodeSharedPointsIntoData(t *testing.T) {
	data := []byte(`{"id":"s-1","start_time":"2026-11-01T10:00:00Z","endpoint":"/v1/chat/completions","model":"m",` +
		`"request":{"messages":[{"role":"user","content":"hi"}]},"response":{"choices":[]},"metadata":{"team":"a","n":[1,2]}}`)
	want, err := Decode(data, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeShared(data, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if diff := eventDiff(want, got); diff != "" {
		t.Fatalf("DecodeShared differs from Decode: %s", diff)
	}
	inData := func(name string, v []byte) {
		t.Helper()
		lo, hi := uintptr(unsafe.Pointer(&data[0])), uintptr(unsafe.Pointer(&data[len(data)-1]))
		if p := uintptr(unsafe.Pointer(&v[0])); p < lo || p > hi {
			t.Errorf("%s was copied out of data", name)
		}
		if cap(v) != len(v) {
			t.Errorf("%s: cap %d, len %d: an append would write into data", name, cap(v), len(v))
		}
	}
	inData("request", got.Request)
	inData("response", got.Response)
	inData("metadata.n", got.Metadata["n"])
	if p, q := &want.Request[0], &got.Request[0]; p == q {
		t.Error("Decode shares its request with DecodeShared's")
	}
}
