package langfuse_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

func ptr[T any](v T) *T { return &v }

func fullCall(id string) schema.Call {
	start := time.Date(2026, 11, 26, 10, 0, 0, 123456000, time.UTC)
	return schema.Call{
		ID: id, TraceID: "tr-" + id, SessionID: "sess-1",
		StartTime: start, EndTime: start.Add(1500 * time.Millisecond),
		FirstTokenTime: ptr(start.Add(200 * time.Millisecond)), LatencyMS: 1500, TTFTMS: ptr(int64(200)),
		Endpoint: "/v1/chat/completions", Kind: schema.KindChat, Model: "qwen2.5-instruct", Instance: "qwen2.5-instruct-0",
		UserID: "alice", UserSource: schema.UserAPIKey, APIKeyPrefix: "xf-abcd",
		Stream: true, Status: 200, FinishReason: "stop",
		InputText: "hi", OutputText: "hello",
		Input:  json.RawMessage(`[{"role":"user","content":"hi"}]`),
		Output: json.RawMessage(`{"role":"assistant","content":"hello"}`),
		ModelParameters: map[string]json.RawMessage{
			"temperature": json.RawMessage(`0.7`), "top_p": json.RawMessage(`0.9`), "max_tokens": json.RawMessage(`256`),
			"stop": json.RawMessage(`["\n\n"]`), "stream": json.RawMessage(`true`),
			"tools": json.RawMessage(`[{"type":"function"}]`), "none": json.RawMessage(`null`),
		},
		InputTokens: 12, OutputTokens: 30, TotalTokens: 42, UsageSource: schema.UsageReported,
		CostUSD:  ptr(0.00042),
		Metadata: map[string]json.RawMessage{"team": json.RawMessage(`"search"`)},
		Tags:     []string{"prod", "chat"}, Source: "proxy", BatchID: "b-1",
		Capture: &schema.Capture{Mode: schema.CaptureTruncated, MaskSet: "3f2a9c01b7de"},
	}
}

func roundTrip(t *testing.T, ev langfuse.Event) map[string]any {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMapCallFields(t *testing.T) {
	c := fullCall("call-1")
	tr, gen := langfuse.MapCall(&c, langfuse.MapOptions{Environment: "production"})

	if tr.Type != "trace-create" || gen.Type != "generation-create" {
		t.Fatalf("types %s %s", tr.Type, gen.Type)
	}
	if tr.ID == gen.ID || tr.ID != langfuse.EnvelopeID("call-1", "trace-create") {
		t.Fatalf("envelope ids %s %s", tr.ID, gen.ID)
	}
	tr2, gen2 := langfuse.MapCall(&c, langfuse.MapOptions{Environment: "production"})
	if tr2.ID != tr.ID || gen2.ID != gen.ID || tr2.Timestamp != tr.Timestamp {
		t.Fatal("envelope ids/timestamps are not stable")
	}
	if tr.Timestamp != "2026-11-26T10:00:00.123456Z" || gen.Timestamp != tr.Timestamp {
		t.Fatalf("envelope timestamp %s", tr.Timestamp)
	}

	tm := roundTrip(t, tr)["body"].(map[string]any)
	want := map[string]any{
		"id": "tr-call-1", "timestamp": "2026-11-26T10:00:00.123456Z", "name": "chat qwen2.5-instruct",
		"userId": "alice", "sessionId": "sess-1", "environment": "production",
	}
	for k, v := range want {
		if tm[k] != v {
			t.Errorf("trace %s = %v, want %v", k, tm[k], v)
		}
	}
	if fmt.Sprint(tm["tags"]) != "[chat prod]" {
		t.Errorf("trace tags %v", tm["tags"])
	}
	if fmt.Sprint(tm["input"]) != "[map[content:hi role:user]]" || fmt.Sprint(tm["output"]) != "map[content:hello role:assistant]" {
		t.Errorf("trace input/output %v %v", tm["input"], tm["output"])
	}
	md := tm["metadata"].(map[string]any)
	for k, v := range map[string]any{
		"instance": "qwen2.5-instruct-0", "endpoint": "/v1/chat/completions", "status": 200.0,
		"usage_source": "reported", "team": "search", "user_source": "api_key", "finish_reason": "stop",
	} {
		if md[k] != v {
			t.Errorf("metadata %s = %v, want %v", k, md[k], v)
		}
	}
	ids := md["callpipe"].(map[string]any)
	if ids["call_id"] != "call-1" || ids["trace_id"] != "tr-call-1" || ids["batch_id"] != "b-1" {
		t.Errorf("callpipe ids %v", ids)
	}
	if cp, _ := ids["capture"].(map[string]any); cp["mode"] != "truncated" || cp["mask_set"] != "3f2a9c01b7de" {
		t.Errorf("callpipe capture %v", ids["capture"])
	}

	gm := roundTrip(t, gen)["body"].(map[string]any)
	for k, v := range map[string]any{
		"id": "call-1", "traceId": "tr-call-1", "name": "chat qwen2.5-instruct", "model": "qwen2.5-instruct",
		"startTime": "2026-11-26T10:00:00.123456Z", "endTime": "2026-11-26T10:00:01.623456Z",
		"completionStartTime": "2026-11-26T10:00:00.323456Z", "environment": "production",
	} {
		if gm[k] != v {
			t.Errorf("generation %s = %v, want %v", k, gm[k], v)
		}
	}
	if _, ok := gm["level"]; ok {
		t.Errorf("level on a successful call: %v", gm["level"])
	}
	mp := gm["modelParameters"].(map[string]any)
	if mp["temperature"] != 0.7 || mp["top_p"] != 0.9 || mp["max_tokens"] != 256.0 || mp["stream"] != true ||
		fmt.Sprint(mp["stop"]) != "[\n\n]" || mp["tools"] != `[{"type":"function"}]` {
		t.Errorf("modelParameters %v", mp)
	}
	if _, ok := mp["none"]; ok {
		t.Error("null model parameter sent")
	}
	if fmt.Sprint(gm["usageDetails"]) != "map[input:12 output:30 total:42]" {
		t.Errorf("usageDetails %v", gm["usageDetails"])
	}
	if fmt.Sprint(gm["costDetails"]) != "map[total:0.00042]" {
		t.Errorf("costDetails %v", gm["costDetails"])
	}
}

func TestMapCallFailureAndFallbacks(t *testing.T) {
	c := fullCall("call-2")
	c.TraceID, c.Status, c.Error, c.Input, c.Output, c.OutputText = "", 500, "model crashed", nil, nil, ""
	c.CostUSD, c.InputTokens, c.OutputTokens, c.TotalTokens = nil, -1, -1, -1
	c.FirstTokenTime = nil
	tr, gen := langfuse.MapCall(&c, langfuse.MapOptions{})
	g := gen.Body.(*langfuse.GenerationBody)
	if g.Level != "ERROR" || g.StatusMessage != "model crashed" {
		t.Errorf("level %q statusMessage %q", g.Level, g.StatusMessage)
	}
	if g.TraceID != "call-2" || tr.Body.(*langfuse.TraceBody).ID != "call-2" {
		t.Errorf("trace id without trace_id: %s", g.TraceID)
	}
	if string(g.Input) != `"hi"` || g.Output != nil {
		t.Errorf("text fallback input %s output %s", g.Input, g.Output)
	}
	if g.UsageDetails != nil || g.CostDetails != nil || g.CompletionStartTime != "" {
		t.Errorf("negative usage / unknown cost sent: %v %v %q", g.UsageDetails, g.CostDetails, g.CompletionStartTime)
	}
	c.Error = ""
	c.Status = 429
	_, gen = langfuse.MapCall(&c, langfuse.MapOptions{})
	if g := gen.Body.(*langfuse.GenerationBody); g.Level != "ERROR" || g.StatusMessage != "HTTP 429" {
		t.Errorf("status-only failure: %q %q", g.Level, g.StatusMessage)
	}
}

func TestMapCallTruncates(t *testing.T) {
	c := fullCall("call-3")
	c.Input = json.RawMessage(`[{"role":"user","content":"` + strings.Repeat("é", 5000) + `"}]`)
	_, gen := langfuse.MapCall(&c, langfuse.MapOptions{MaxFieldBytes: 1000})
	g := gen.Body.(*langfuse.GenerationBody)
	var s string
	if err := json.Unmarshal(g.Input, &s); err != nil {
		t.Fatalf("truncated input is not a JSON string: %v", err)
	}
	if !strings.Contains(s, langfuse.TruncationMarker) || !strings.Contains(s, "of 10030 bytes kept]") {
		t.Fatalf("no marker: %q", s[len(s)-80:])
	}
	if len(s) > 1100 || !strings.HasPrefix(s, `[{"role":"user"`) {
		t.Fatalf("truncated to %d bytes", len(s))
	}
	if string(g.Output) != string(c.Output) {
		t.Error("small output changed")
	}
}

func TestValidEnvironment(t *testing.T) {
	for env, ok := range map[string]bool{"": true, "production": true, "staging-2_a": true, "Prod": false,
		"langfuse-x": false, "a b": false, strings.Repeat("a", 41): false} {
		if langfuse.ValidEnvironment(env) != ok {
			t.Errorf("ValidEnvironment(%q) != %v", env, ok)
		}
	}
}

// TestContractMerged sends calls to the contract server and checks what a
// Langfuse user would see, against both the v3 server and a v4 one with the
// ingestion API (where it answers "Event type not accepted").
func TestContractMerged(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	out := newOutput(t, srv, nil)
	calls := []schema.Call{fullCall("a"), fullCall("b")}
	calls[1].Status, calls[1].Error = 400, "bad request"
	res, err := out.WriteBatch(context.Background(), calls)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.State != langfuse.Accepted {
			t.Fatalf("call %d: %+v", i, r)
		}
	}
	if acc, rej, dropped := srv.Counts(); acc != 4 || rej != 0 || dropped != 0 {
		t.Fatalf("server counts %d %d %d", acc, rej, dropped)
	}
	tr := srv.Traces()["tr-a"]
	if tr.Name != "chat qwen2.5-instruct" || tr.UserID != "alice" || tr.SessionID != "sess-1" ||
		!tr.Timestamp.Equal(calls[0].StartTime) || tr.Environment != "test" || fmt.Sprint(tr.Tags) != "[chat prod]" ||
		tr.Metadata["instance"] != "qwen2.5-instruct-0" {
		t.Errorf("trace %+v", tr)
	}
	o := srv.Observations()["b"]
	if o.Type != "GENERATION" || o.TraceID != "tr-b" || o.Level != "ERROR" || o.StatusMessage != "bad request" ||
		o.UsageDetails["total"] != 42 || o.CostDetails["total"] != 0.00042 || o.Model != "qwen2.5-instruct" ||
		o.EndTime.Sub(o.StartTime) != 1500*time.Millisecond || o.CompletionStartTime.Sub(o.StartTime) != 200*time.Millisecond {
		t.Errorf("observation %+v", o)
	}

	v4 := langfusetest.New(langfusetest.Options{Version: "4.16.0"})
	defer v4.Close()
	out4 := newOutput(t, v4, func(c *langfuse.OutputConfig) { c.Transport = langfuse.TransportIngestion })
	res, err = out4.WriteBatch(context.Background(), calls[:1])
	if err != nil {
		t.Fatal(err)
	}
	if res[0].State != langfuse.Rejected || !strings.Contains(res[0].Reason, "Event type not accepted") {
		t.Fatalf("v4 ingestion: %+v", res[0])
	}
}

// TestContractServerRejects checks that the contract server refuses what
// Langfuse refuses, so the other tests mean something.
func TestContractServerRejects(t *testing.T) {
	srv := langfusetest.New(langfusetest.Options{})
	defer srv.Close()
	ev := func(id, ts, typ, body string) string {
		return fmt.Sprintf(`{"id":%q,"timestamp":%q,"type":%q,"body":%s}`, id, ts, typ, body)
	}
	ok := "2026-01-01T00:00:00.000Z"
	cases := []struct {
		name, event string
		status      int
	}{
		{"ok", ev("e1", ok, "generation-create", `{"id":"g","traceId":"t","usageDetails":{"input":1}}`), 201},
		{"offset ts", ev("e2", "2026-01-01T00:00:00+02:00", "trace-create", `{"id":"t"}`), 201},
		{"no offset", ev("e3", "2026-01-01T00:00:00", "trace-create", `{"id":"t"}`), 400},
		{"empty id", ev("", ok, "trace-create", `{"id":"t"}`), 400},
		{"long id", ev(strings.Repeat("x", 801), ok, "trace-create", `{"id":"t"}`), 400},
		{"cr id", ev("a\rb", ok, "trace-create", `{"id":"t"}`), 400},
		{"gen without id", ev("e4", ok, "generation-create", `{"traceId":"t"}`), 400},
		{"negative usage", ev("e5", ok, "generation-create", `{"id":"g","usageDetails":{"input":-1}}`), 400},
		{"float usage", ev("e6", ok, "generation-create", `{"id":"g","usageDetails":{"input":1.5}}`), 400},
		{"bad level", ev("e7", ok, "generation-create", `{"id":"g","level":"FATAL"}`), 400},
		{"bad param", ev("e8", ok, "generation-create", `{"id":"g","modelParameters":{"x":[1]}}`), 400},
		{"bad type", ev("e9", ok, "trace-update", `{"id":"t"}`), 400},
		{"bad tags", ev("e10", ok, "trace-create", `{"id":"t","tags":[1]}`), 400},
		{"body not object", ev("e12", ok, "trace-create", `"x"`), 400},
		{"event not object", `42`, 400},
		{"id not string", `{"id":5,"timestamp":"` + ok + `","type":"trace-create","body":{}}`, 400},
		{"bad cost", ev("e13", ok, "generation-create", `{"id":"g","costDetails":{"total":"x"}}`), 400},
	}
	for _, tc := range cases {
		status, body := post(t, srv.URL, "Basic "+basic("pk-lf-test", "sk-lf-test"), `{"batch":[`+tc.event+`]}`)
		if status != 207 {
			t.Fatalf("%s: status %d %s", tc.name, status, body)
		}
		got := 201
		if strings.Contains(body, `"errors":[{`) {
			got = 400
		}
		if got != tc.status {
			t.Errorf("%s: got %d: %s", tc.name, got, body)
		}
	}
	if st, _ := post(t, srv.URL, "", `{"batch":[]}`); st != 401 {
		t.Errorf("no auth: %d", st)
	}
	if st, _ := post(t, srv.URL, "Basic "+basic("pk-lf-test", "wrong"), `{"batch":[]}`); st != 401 {
		t.Errorf("bad secret: %d", st)
	}
	if st, body := post(t, srv.URL, "Bearer pk-lf-test", `{"batch":[`+ev("e1", ok, "trace-create", `{"id":"t"}`)+`]}`); st != 207 ||
		!strings.Contains(body, `"status":401`) {
		t.Errorf("bearer: %d %s", st, body)
	}
	if st, _ := post(t, srv.URL, "Basic "+basic("pk-lf-test", "sk-lf-test"), `{"events":[]}`); st != 400 {
		t.Errorf("bad shape: %d", st)
	}
	big := `{"batch":[` + ev("e1", ok, "trace-create", `{"id":"t","input":"`+strings.Repeat("x", langfusetest.MaxBodyBytes)+`"}`) + `]}`
	if st, _ := post(t, srv.URL, "Basic "+basic("pk-lf-test", "sk-lf-test"), big); st != 413 {
		t.Errorf("big body: %d", st)
	}
	// trace-create without body.id: 201, never stored (NOTES.md §1 GOTCHA).
	if st, body := post(t, srv.URL, "Basic "+basic("pk-lf-test", "sk-lf-test"), `{"batch":[`+ev("e11", ok, "trace-create", `{"name":"x"}`)+`]}`); st != 207 ||
		!strings.Contains(body, `"status":201`) {
		t.Errorf("trace without id: %d %s", st, body)
	}
	if _, _, dropped := srv.Counts(); dropped != 1 {
		t.Errorf("dropped = %d", dropped)
	}
}

// TestAppendMatchesMarshal: the hand-written encoder writes what
// encoding/json writes for the same event (the tests above use json.Marshal).
func TestAppendMatchesMarshal(t *testing.T) {
	cs := []schema.Call{fullCall("x"), fullCall("y\"\n\t\u2028\x01<>&é")}
	cs[1].Error, cs[1].Status, cs[1].UserID = "bad \"quote\" \\ \xff", 500, "ü\u2029"
	cs[1].Input = json.RawMessage(` [ {"role" : "user"} ] `)
	cs[1].Metadata = map[string]json.RawMessage{"status": json.RawMessage(`"overridden"`), "z": json.RawMessage(`{"a":[1,2]}`)}
	cs[1].ModelParameters["weird"] = json.RawMessage(`{"a":1}`)
	for _, c := range cs {
		tr, gen := langfuse.MapCall(&c, langfuse.MapOptions{Environment: "e", Release: "r1"})
		for _, ev := range []langfuse.Event{tr, gen} {
			fast := ev.AppendJSON(nil)
			if !json.Valid(fast) {
				t.Fatalf("invalid JSON: %s", fast)
			}
			std, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			var a, b any
			_ = json.Unmarshal(fast, &a)
			_ = json.Unmarshal(std, &b)
			if fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("%s:\nappend  %s\nmarshal %s", ev.Type, fast, std)
			}
		}
	}
}

func TestAppendFloatMatchesMarshal(t *testing.T) {
	for _, v := range []float64{0, 0.00042, 1e-7, 1.5e-9, 123456.789, 1e21, 3e22, 0.1, 42} {
		std, _ := json.Marshal(v)
		tr, gen := langfuse.MapCall(&schema.Call{ID: "f", CostUSD: &v}, langfuse.MapOptions{})
		_ = tr
		got := string(gen.AppendJSON(nil))
		if !strings.Contains(got, `"costDetails":{"total":`+string(std)+`}`) {
			t.Errorf("%v: %s, want total %s", v, got, std)
		}
	}
	inf := math.Inf(1)
	_, gen := langfuse.MapCall(&schema.Call{ID: "f", CostUSD: &inf}, langfuse.MapOptions{})
	if b := gen.AppendJSON(nil); !json.Valid(b) || strings.Contains(string(b), "costDetails") {
		t.Errorf("infinite cost: %s", b)
	}
}

// TestMetadataSortedAndMerged: callpipe's keys override the call's own,
// the call's other keys are kept, and the object's keys come out sorted
// (byte-identical resends).
func TestMetadataSortedAndMerged(t *testing.T) {
	c := fullCall("m")
	c.Metadata = map[string]json.RawMessage{"zz": json.RawMessage(`1`), "a": json.RawMessage(`"x"`),
		"status": json.RawMessage(`"mine"`), "kind2": json.RawMessage(`[1]`), "bad": json.RawMessage(`{`)}
	tr, _ := langfuse.MapCall(&c, langfuse.MapOptions{})
	md := tr.Body.(*langfuse.TraceBody).Metadata
	d := json.NewDecoder(strings.NewReader(string(md)))
	var keys []string
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("%s", md)
	}
	for d.More() {
		k, _ := d.Token()
		keys = append(keys, k.(string))
		var skip json.RawMessage
		if err := d.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	if !sort.StringsAreSorted(keys) {
		t.Errorf("keys not sorted: %v", keys)
	}
	var m map[string]any
	if err := json.Unmarshal(md, &m); err != nil {
		t.Fatal(err)
	}
	if m["status"] != 200.0 || m["a"] != "x" || m["zz"] != 1.0 || m["kind2"] == nil || m["bad"] != nil || m["instance"] != "qwen2.5-instruct-0" {
		t.Errorf("metadata %s", md)
	}
}
