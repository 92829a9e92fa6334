package collector

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
)

func collect(seq iter.Seq2[int, []byte]) [][]byte {
	var out [][]byte
	for _, raw := range seq {
		out = append(out, raw)
	}
	return out
}

func TestSplitNDJSON(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"a", []string{"a"}},
		{"a\nb\n", []string{"a", "b"}},
		{"a\r\n\r\n  \n b \r\n", []string{"a", " b "}},
		{"\n\n{\"x\":1}", []string{`{"x":1}`}},
	}
	for _, tc := range cases {
		got := SplitNDJSON([]byte(tc.in))
		if len(got) != len(tc.want) {
			t.Fatalf("%q: got %q want %q", tc.in, got, tc.want)
		}
		for i := range got {
			if string(got[i]) != tc.want[i] {
				t.Fatalf("%q: line %d = %q want %q", tc.in, i, got[i], tc.want[i])
			}
		}
	}
}

func TestSplitByContentType(t *testing.T) {
	if _, err := split("text/csv", []byte("{}")); err == nil {
		t.Fatal("text/csv accepted")
	}
	seq, err := split("application/json; charset=utf-8", []byte(` [ {"a":1} , {"b":2} ] `))
	if got := collect(seq); err != nil || len(got) != 2 || string(got[1]) != `{"b":2}` {
		t.Fatalf("array: %q %v", got, err)
	}
	for _, empty := range []string{`[]`, `[ ] `, "[\n]"} {
		if _, err := split("application/json", []byte(empty)); err == nil || !strings.Contains(err.Error(), "empty array") {
			t.Fatalf("empty array %q: %v", empty, err)
		}
	}
	if _, err := split("application/json", []byte(`[{"a":1}, {"b":`)); err == nil || !strings.Contains(err.Error(), "invalid JSON array") {
		t.Fatalf("truncated array: %v", err)
	}
	seq, err = split("application/x-ndjson", []byte("{}\n\n{\"a\":1}\r\n"))
	if got := collect(seq); err != nil || len(got) != 2 || string(got[1]) != `{"a":1}` {
		t.Fatalf("ndjson: %q %v", got, err)
	}
	if _, err := split("application/json", []byte("  ")); err == nil {
		t.Fatal("empty body accepted")
	}
	seq, err = split("", []byte(`{"id":"x"}`))
	if got := collect(seq); err != nil || len(got) != 1 {
		t.Fatalf("default content type: %q %v", got, err)
	}
}

// FuzzSplitNDJSON: lines never contain a newline, never are blank, and
// joining them loses no non-blank byte of the input.
func FuzzSplitNDJSON(f *testing.F) {
	for _, seed := range []string{"", "\n", "a\nb", "a\r\n\r\nb\r", "{\"id\":1}\n{\"id\":2}\n", " \t\n\r\n"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		lines := SplitNDJSON(in)
		var kept int
		for _, l := range lines {
			if bytes.IndexByte(l, '\n') >= 0 {
				t.Fatalf("line holds a newline: %q", l)
			}
			if len(bytes.TrimSpace(l)) == 0 {
				t.Fatalf("blank line returned: %q", l)
			}
			kept += len(bytes.TrimSpace(l))
		}
		var want int
		for _, l := range bytes.Split(in, []byte("\n")) {
			want += len(bytes.TrimSpace(l))
		}
		if kept != want {
			t.Fatalf("non-blank bytes: kept %d of %d", kept, want)
		}
	})
}

// noPublish is a connected publisher that must not be asked to publish.
type noPublish struct{ t *testing.T }

func (p noPublish) PublishMsgAsync(*nats.Msg) (ingest.Pending, error) {
	p.t.Error("an invalid event was published")
	return ingest.Pending{}, errors.New("not expected")
}
func (noPublish) Connected() bool { return true }

// TestRejectionsBounded: a body of thousands of invalid events is answered
// with the first MaxRejections listed and the rest counted, gzip or not,
// NDJSON or array.
func TestRejectionsBounded(t *testing.T) {
	const n = 2500
	ndjson := bytes.Repeat([]byte("{}\n"), n)
	array := append([]byte("["), bytes.Repeat([]byte("{},"), n)...)
	array[len(array)-1] = ']'
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(ndjson)
	zw.Close()
	col := New(noPublish{t}, Options{})
	for _, tc := range []struct {
		name, ctype, enc string
		body             []byte
	}{
		{"ndjson", "application/x-ndjson", "", ndjson},
		{"array", "application/json", "", array},
		{"gzip ndjson", "application/x-ndjson", "gzip", gz.Bytes()},
	} {
		req := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(tc.body))
		req.Header.Set("Content-Type", tc.ctype)
		if tc.enc != "" {
			req.Header.Set("Content-Encoding", tc.enc)
		}
		rec := httptest.NewRecorder()
		col.ServeHTTP(rec, req)
		var r Reply
		if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v: %s", tc.name, err, rec.Body.Bytes())
		}
		if rec.Code != http.StatusBadRequest || len(r.Rejected) != MaxRejections || r.RejectionsOmitted != n-MaxRejections {
			t.Fatalf("%s: %d, %d listed, %d omitted", tc.name, rec.Code, len(r.Rejected), r.RejectionsOmitted)
		}
		if first, last := r.Rejected[0], r.Rejected[MaxRejections-1]; first.Index != 0 || last.Index != MaxRejections-1 || first.Error == "" {
			t.Fatalf("%s: rejections %+v … %+v", tc.name, first, last)
		}
		if rec.Body.Len() > 200<<10 {
			t.Fatalf("%s: answer of %d bytes", tc.name, rec.Body.Len())
		}
	}
}

// TestBodyLimitNamesTheKey: an inflated body over the limit is 413 naming
// collect.max_body_bytes, whatever its compressed size.
func TestBodyLimitNamesTheKey(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat([]byte("{}\n"), 1<<20))
	zw.Close()
	req := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(gz.Bytes()))
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Content-Encoding", "gzip")
	rec := httptest.NewRecorder()
	New(noPublish{t}, Options{MaxBodyBytes: 1 << 20}).ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rec.Body.String(), "collect.max_body_bytes") || !strings.Contains(rec.Body.String(), "1048576") {
		t.Fatalf("%d %s", rec.Code, rec.Body.String())
	}
}

// recordPublish keeps what the collector would publish (the messages
// themselves, as the JetStream client keeps them until acknowledged), then
// fails: at the first message, or after accept messages.
type recordPublish struct {
	msgs   []*nats.Msg
	accept int
}

func (p *recordPublish) PublishMsgAsync(m *nats.Msg) (ingest.Pending, error) {
	p.msgs = append(p.msgs, m)
	if len(p.msgs) <= p.accept {
		return ingest.Pending{}, nil
	}
	return ingest.Pending{}, errors.New("recorded")
}
func (*recordPublish) Connected() bool { return true }

// The capture policy is applied to every valid event before it is
// published, and a producer's own capture record is replaced.
func TestCapturePolicyBeforePublish(t *testing.T) {
	policy, err := capture.New(capture.Options{Users: []string{"patient-*=none"}, Masks: capture.DefaultMasks})
	if err != nil {
		t.Fatal(err)
	}
	pub := &recordPublish{}
	c := New(pub, Options{Capture: policy})
	body := `{"id":"c-1","start_time":"2026-01-01T00:00:00Z","endpoint":"/v1/chat/completions","model":"m","user":"Patient-7",` +
		`"request":{"messages":[{"role":"user","content":"my diagnosis, mail me at pat@example.com"}]},` +
		`"usage":{"prompt_tokens":9,"completion_tokens":0,"total_tokens":9},"capture":{"mode":"full"}}` + "\n" +
		`{"id":"c-2","start_time":"2026-01-01T00:00:00Z","endpoint":"/v1/chat/completions","model":"m","user":"doctor",` +
		`"request":{"messages":[{"role":"user","content":"mail pat@example.com"}]}}`
	req := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-ndjson")
	c.ServeHTTP(httptest.NewRecorder(), req)
	if len(pub.msgs) != 1 {
		t.Fatalf("%d messages published before the failure, want 1", len(pub.msgs))
	}
	data := string(pub.msgs[0].Data)
	if strings.Contains(data, "diagnosis") || strings.Contains(data, "pat@") || !strings.Contains(data, `"capture":{"mode":"none","mask_set":"`+policy.MaskSet()+`"}`) ||
		!strings.Contains(data, `"usage":{"prompt_tokens":9,"completion_tokens":0,"total_tokens":9}`) {
		t.Fatalf("published %s", data)
	}
}

// An event that fits the limit as sent but not once its masks lengthened it
// is rejected, naming the limit, instead of becoming poison for normalize
// (which decodes with the same limit).
func TestMaskedEventOverLimitRejected(t *testing.T) {
	policy, err := capture.New(capture.Options{Masks: capture.DefaultMasks})
	if err != nil {
		t.Fatal(err)
	}
	head := `{"id":"big","start_time":"2026-01-01T00:00:00Z","endpoint":"/v1/chat/completions","model":"m","request":{"p":"`
	tail := `"}}`
	addrs := strings.Repeat("a@b.co ", 40) // each address becomes [REDACTED]: 4 bytes longer
	const limit = 4096
	body := head + addrs + strings.Repeat("x", limit-len(head)-len(addrs)-len(tail)) + tail
	c := New(noPublish{t}, Options{Capture: policy, Limits: schema.Limits{MaxEventBytes: limit}})
	req := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader(body))
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "limit 4096 (event.max_bytes)") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}

// The messages of one request share a buffer: each keeps its own bytes
// while the others are written after it.
func TestMessagesOfARequestKeepTheirBytes(t *testing.T) {
	pub := &recordPublish{accept: 50}
	c := New(pub, Options{})
	var body strings.Builder
	for i := range 51 {
		fmt.Fprintf(&body, `{"id":"m-%d","start_time":"2026-01-01T00:00:00Z","endpoint":"/v1/chat/completions","model":"m",`+
			`"request":{"messages":[{"role":"user","content":"%s"}]}}`+"\n", i, strings.Repeat(strconv.Itoa(i%10), 10+i*37))
	}
	req := httptest.NewRequest(http.MethodPost, "/v1/events", strings.NewReader(body.String()))
	req.Header.Set("Content-Type", "application/x-ndjson")
	c.ServeHTTP(httptest.NewRecorder(), req)
	if len(pub.msgs) != 51 {
		t.Fatalf("%d messages published, want 51", len(pub.msgs))
	}
	for i, m := range pub.msgs {
		ev, err := schema.Decode(m.Data, schema.DefaultLimits())
		if err != nil {
			t.Fatalf("message %d: %v\n%s", i, err, m.Data)
		}
		content := strings.Repeat(strconv.Itoa(i%10), 10+i*37)
		if ev.ID != fmt.Sprintf("m-%d", i) || !strings.Contains(string(ev.Request), content) || m.Header.Get("Nats-Msg-Id") != ev.ID {
			t.Fatalf("message %d overwritten: id %q, request %.80s", i, ev.ID, ev.Request)
		}
	}
}
