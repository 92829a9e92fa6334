package capture

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
)

func mustPolicy(t *testing.T, o Options) *Policy {
	t.Helper()
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMode(t *testing.T) {
	p := mustPolicy(t, Options{Payloads: Truncated,
		Models: []string{"hr-*=none", "public-*=full", "*-draft=truncated"},
		Users:  []string{"vip-*=full", "patient-*=none", "public-*=truncated"}})
	for _, c := range []struct{ model, user, want string }{
		{"other", "", Truncated},               // default
		{"HR-Assistant", "", None},             // model rule, case-insensitive
		{"public-chat", "", Full},              // model rule
		{"other", "vip-7", Full},               // user rule
		{"other", "Patient-1", None},           // user rule, case-insensitive
		{"public-chat", "patient-1", None},     // both match: the stricter
		{"hr-bot", "vip-7", None},              // both match: the stricter
		{"public-chat", "public-1", Truncated}, // both match: the stricter
		{"public-draft", "", Full},             // first model rule wins
	} {
		if got := p.Mode(c.model, c.user); got != c.want {
			t.Errorf("Mode(%q, %q) = %s, want %s", c.model, c.user, got, c.want)
		}
	}
	if !p.Redacts() || !mustPolicy(t, Options{Masks: DefaultMasks}).Redacts() || mustPolicy(t, Options{Models: []string{"x=full"}}).Redacts() {
		t.Error("Redacts")
	}
}

func TestNewErrorsNameTheOption(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Payloads: "some"}, `payloads "some"`},
		{Options{Models: []string{"x=all"}}, `payloads_models "x=all"`},
		{Options{Users: []string{"=none"}}, `payloads_users "=none"`},
		{Options{Users: []string{"[=none"}}, `payloads_users "[=none"`},
		{Options{Masks: []string{"("}}, `masks "("`},
	} {
		_, err := New(c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one naming %s", c.o, err, c.want)
		}
	}
}

func chatEvent(model, user string) *schema.Event {
	end := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &schema.Event{ID: "e-1", StartTime: end.Add(-time.Second), EndTime: &end, Endpoint: "/v1/chat/completions",
		Model: model, User: user, Status: 200,
		Request:  json.RawMessage(`{"model":"m","temperature":0.2,"messages":[{"role":"user","content":"MARKER-77 write to bob.smith@example.com about \"` + strings.Repeat("é", 30) + `\""}]}`),
		Response: json.RawMessage(`{"choices":[{"message":{"role":"assistant","content":"Sure, bob.smith@example.com"},"finish_reason":"stop"}]}`),
		Error:    "",
		Metadata: map[string]json.RawMessage{"note": json.RawMessage(`"from carol@example.net"`), "n": json.RawMessage(`12345678901`)},
	}
}

// encode is what ingest publishes of ev.
func encode(ev *schema.Event) string { return string(schema.AppendEvent(nil, ev)) }

func TestEventNoneCountsThenDrops(t *testing.T) {
	var counted *schema.Event
	p := mustPolicy(t, Options{Models: []string{"hr-*=none"}, Masks: DefaultMasks,
		Count: func(ev *schema.Event) (int64, int64, bool) {
			counted = ev
			if !strings.Contains(string(ev.Request), "MARKER-77") {
				t.Error("counter called after the text was dropped")
			}
			return 31, 7, true
		}})
	ev := chatEvent("hr-assistant", "")
	ev.Capture = &schema.Capture{Mode: Full} // a producer's own record is not trusted
	p.Event(ev)
	if counted == nil {
		t.Fatal("tokens not counted before the payload was dropped")
	}
	out := encode(ev)
	for _, leak := range []string{"MARKER-77", "bob.smith", "carol@"} {
		if strings.Contains(out, leak) {
			t.Errorf("%q published: %s", leak, out)
		}
	}
	if ev.Request != nil || ev.Response != nil {
		t.Errorf("payload kept: %s", out)
	}
	if u := ev.Usage; u == nil || *u.PromptTokens != 31 || *u.CompletionTokens != 7 || *u.TotalTokens != 38 {
		t.Fatalf("usage %+v, want 31+7", ev.Usage)
	}
	want := schema.Capture{Mode: None, MaskSet: MaskSetVersion(DefaultMasks), Counted: true}
	if ev.Capture == nil || *ev.Capture != want {
		t.Fatalf("capture %+v, want %+v", ev.Capture, want)
	}
	if err := ev.Validate(); err != nil {
		t.Fatal(err)
	}
	// Idempotent: the second pass neither counts again nor changes anything.
	counted = nil
	again := *ev
	p.Event(&again)
	if counted != nil || encode(&again) != out {
		t.Fatalf("second pass changed the event:\n%s\n%s", encode(&again), out)
	}
}

func TestEventTruncatedAndMasked(t *testing.T) {
	p := mustPolicy(t, Options{Users: []string{"trial-*=truncated"}, MaxChars: 12, Masks: DefaultMasks})
	ev := chatEvent("m", "trial-3")
	p.Event(ev)
	out := encode(ev)
	if !json.Valid(ev.Request) || !json.Valid(ev.Response) {
		t.Fatalf("invalid JSON: %s", out)
	}
	var req struct {
		Model       string  `json:"model"`
		Temperature float64 `json:"temperature"`
		Messages    []struct{ Role, Content string }
	}
	if err := json.Unmarshal(ev.Request, &req); err != nil {
		t.Fatal(err)
	}
	if got := req.Messages[0].Content; got != "MARKER-77 wr…" || req.Messages[0].Role != "user" || req.Temperature != 0.2 {
		t.Fatalf("truncated request: %s", ev.Request)
	}
	if strings.Contains(out, "bob.smith") || strings.Contains(out, "carol@") || !strings.Contains(string(ev.Metadata["note"]), Mask) {
		t.Fatalf("not masked: %s", out)
	}
	if string(ev.Metadata["n"]) != "12345678901" {
		t.Fatalf("a number is not a phone number: %s", ev.Metadata["n"])
	}
	if *ev.Capture != (schema.Capture{Mode: Truncated, MaskSet: MaskSetVersion(DefaultMasks)}) {
		t.Fatalf("capture %+v", ev.Capture)
	}
	again := *ev
	again.Metadata = map[string]json.RawMessage{}
	for k, v := range ev.Metadata {
		again.Metadata[k] = v
	}
	p.Event(&again)
	if encode(&again) != out {
		t.Fatalf("not idempotent:\n%s\n%s", encode(&again), out)
	}
}

func TestEventFullKeepsPayloadAndUsage(t *testing.T) {
	p := mustPolicy(t, Options{})
	ev := chatEvent("m", "")
	before := encode(ev)
	p.Event(ev)
	if string(ev.Request) != string(chatEvent("m", "").Request) || ev.Usage != nil {
		t.Fatalf("full mode changed the payload: %s → %s", before, encode(ev))
	}
	if ev.Capture.Mode != Full || ev.Capture.MaskSet != MaskSetVersion(nil) {
		t.Fatalf("capture %+v", ev.Capture)
	}
	var nilPolicy *Policy
	ev2 := chatEvent("m", "")
	nilPolicy.Event(ev2)
	if ev2.Capture != nil {
		t.Fatal("a nil policy recorded a capture")
	}
}

func TestTruncateStrings(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"a":"abcdef","long-key-name":1}`, `{"a":"abcd…","long-key-name":1}`},
		{`["ab", "a\"bcdef", {"k" : "xyzxyz"}]`, `["ab", "a\"bc…", {"k" : "xyzx…"}]`},
		{`"éééééé"`, `"éééé…"`},
		{`"abcd…"`, `"abcd…"`}, // already cut: unchanged
		{`{"n":12345678,"t":true}`, `{"n":12345678,"t":true}`},
	} {
		got := string(truncateStrings(json.RawMessage(c.in), 4))
		if got != c.want {
			t.Errorf("truncateStrings(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

func TestCallRecordsBothPasses(t *testing.T) {
	p := mustPolicy(t, Options{Models: []string{"secret-*=none"}, Masks: DefaultMasks})
	c := &schema.Call{Model: "secret-1", InputText: "hi bob@example.com", Input: json.RawMessage(`["x"]`), InputTokens: 5}
	p.Call(c, "", nil)
	if c.InputText != "" || c.Input != nil || c.InputTokens != 5 || *c.Capture != (schema.Capture{Mode: None, MaskSet: p.MaskSet()}) {
		t.Fatalf("call %+v capture %+v", c, c.Capture)
	}
	first := *c
	p.Call(c, "", nil)
	if !reflect.DeepEqual(first, *c) {
		t.Fatalf("not idempotent: %+v vs %+v", first, *c)
	}
	// An event redacted at the edge under another configuration: the call
	// records the stricter mode and both mask sets.
	c = &schema.Call{Model: "open-1", OutputText: "ok"}
	edge := &schema.Capture{Mode: Truncated, MaskSet: "aaaaaaaaaaaa", Counted: true}
	p.Call(c, "", edge)
	if *c.Capture != (schema.Capture{Mode: Truncated, MaskSet: "aaaaaaaaaaaa+" + p.MaskSet(), Counted: true}) {
		t.Fatalf("capture %+v", c.Capture)
	}
	// Same configuration at the edge: one mask set.
	p.Call(c, "", &schema.Capture{Mode: Full, MaskSet: p.MaskSet()})
	if *c.Capture != (schema.Capture{Mode: Full, MaskSet: p.MaskSet()}) {
		t.Fatalf("capture %+v", c.Capture)
	}
}

// Numbers that look like phone numbers to the default masks (an embedding's
// floats, a `created` timestamp) are not text: a payload with nothing else
// to mask stays byte for byte as it was, and its reported usage is not
// replaced by a count (which runs only when masking changed the payload).
func TestMaskLeavesNumbersAndUntouchedPayloads(t *testing.T) {
	countCalls := 0
	p := mustPolicy(t, Options{Masks: DefaultMasks, Count: func(*schema.Event) (int64, int64, bool) {
		countCalls++
		return 1, 1, true
	}})
	resp := `{"object":"list","created":1733350000,"model":"bge-m3","data":[{"index":0,"object":"embedding","embedding":[0.12549019607843137,-0.4588235294117647,0.0019607843137254832]}],"usage":{"prompt_tokens":12,"total_tokens":12}}`
	ev := chatEvent("bge-m3", "")
	ev.Endpoint = "/v1/embeddings"
	ev.Request = json.RawMessage(`{"model":"bge-m3","input":"call 555 123 4567 later","n": 5551234567}`)
	ev.Response = json.RawMessage(resp)
	in, out, total := int64(12), int64(0), int64(12)
	ev.Usage = &schema.Usage{PromptTokens: &in, CompletionTokens: &out, TotalTokens: &total}
	p.Event(ev)
	if string(ev.Response) != resp {
		t.Errorf("response changed:\n%s\nwant\n%s", ev.Response, resp)
	}
	if want := `{"model":"bge-m3","input":"call [REDACTED] later","n": 5551234567}`; string(ev.Request) != want {
		t.Errorf("request %s, want %s (the text masked, the number kept)", ev.Request, want)
	}
	if countCalls != 1 {
		t.Errorf("counted %d times, want once (the request's text was masked)", countCalls)
	}
	// Nothing to mask anywhere: no count, usage as reported.
	countCalls = 0
	ev2 := chatEvent("bge-m3", "")
	ev2.Request = json.RawMessage(`{"model":"bge-m3","input":"hello"}`)
	ev2.Response = json.RawMessage(resp)
	ev2.Usage = &schema.Usage{PromptTokens: &in, CompletionTokens: &out, TotalTokens: &total}
	p.Event(ev2)
	if countCalls != 0 || *ev2.Usage.PromptTokens != 12 || string(ev2.Response) != resp {
		t.Errorf("nothing to mask: counted %d times, usage %+v, response %s", countCalls, ev2.Usage, ev2.Response)
	}
	// A match across a number and a string's escape goes the decoding way
	// and still keeps an unmasked payload as it was.
	odd := json.RawMessage(`{"a":"x\"y","n":12345678901}`)
	if got := p.maskJSON(odd); string(got) != string(odd) {
		t.Errorf("maskJSON(%s) = %s", odd, got)
	}
}

func TestMaskStrings(t *testing.T) {
	p := mustPolicy(t, Options{Masks: DefaultMasks})
	phone := p.masks[1]
	for _, c := range []struct{ in, want string }{
		{`{"n":12345678901,"t":"call 555 123 4567"}`, `{"n":12345678901,"t":"call [REDACTED]"}`},
		{`[0.12549019607843137,-0.4588235294117647]`, ``}, // numbers only: nothing
		{`{"a":"x\"555 123 4567\"","b":"555 123 4567"}`, `{"a":"x\"[REDACTED]\"","b":"[REDACTED]"}`},
		{`"555 123 4567`, `"[REDACTED]`}, // cut text: the open string still counts
	} {
		got, ok := maskStrings([]byte(c.in), phone)
		if want := c.want; (want == "") == ok || (ok && string(got) != want) {
			t.Errorf("maskStrings(%s) = %s, %v; want %q", c.in, got, ok, want)
		}
	}
}

// A mask's filter may let text through that the mask does not match, never
// the reverse; string and byte forms agree.
func TestMaskFiltersNeverHideAMatch(t *testing.T) {
	p := mustPolicy(t, Options{Masks: DefaultMasks})
	texts := []string{
		"mail bob.smith@example.com now", "no at sign here", "call +1 (555) 123-4567", "order 12345678",
		"key sk-abcdefghijklmnopqrstuvwx", "pk_ABCDEFGHIJKLMNOPQRSTUV", "my api-0123456789abcdefghij",
		"key_0123456789abcdefghijklmn", "xf-0123456789abcdefghijklmn", "rk-short", "ask-me", "-sk-", "k-", "_",
		"plain text without anything", "",
	}
	for _, m := range p.masks {
		for _, s := range texts {
			str, b := m.possible.str(s), m.possible.bytes([]byte(s))
			if str != b {
				t.Errorf("mask %s on %q: string filter %v, bytes filter %v", m.re, s, str, b)
			}
			if m.re.MatchString(s) && !str {
				t.Errorf("mask %s matches %q but its filter says it cannot", m.re, s)
			}
		}
	}
	if m := p.masks[2]; !m.possible.str("x sk-") || m.possible.str("desk top") || m.possible.str("s-k") {
		t.Error("key prefix filter: want sk- found, 'desk top' and 's-k' not")
	}
}
