package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
	"github.com/callpipe/callpipe/transform"
)

// TestCapturePolicyAtTheEdge: with capture.payloads none for the hr-* models
// and the default masks on, a call whose prompt and answer hold a marker
// string and an e-mail address goes through the proxy, and another through
// the collector. The marker and the address are in none of: the raw stream,
// the archive objects (decompressed), the exports in every format (of the
// calls and of the archive), the dead letters, the Langfuse requests and
// ClickHouse. Tokens are still counted: the proxy's call keeps the usage
// Xinference reported, the collector's (which reports none) the count of
// normalize's tokenizer, taken at the edge before the text was dropped.
//
// Every process is the real binary. The proxy and the collector publish on
// callpipe.calls.online, which other tests share; the stages of this test
// read copies of exactly those raw bytes on the run's own subject (and the
// sinks copies of normalize's records on the run's own normalized subject),
// so that they see this run's calls only.
func TestCapturePolicyAtTheEdge(t *testing.T) {
	const marker = "ZEBRA-MARKER-4471"
	const email = "jane.roe@example.org"
	leaks := func(b []byte) string {
		for _, s := range []string{marker, email, "jane.roe"} {
			if bytes.Contains(b, []byte(s)) {
				return s
			}
		}
		return ""
	}
	natsURL := harness.NATS(t)
	_, js := testkit.JetStream(t, natsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, bus.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	ex := newExportEnv(t, 0)
	ar := newArchEnv(t)
	run := ar.run
	policy := []string{"CALLPIPE_NATS_URL=" + natsURL, "CALLPIPE_CAPTURE_PAYLOADS_MODELS=hr-*=none", "CALLPIPE_LOG_LEVEL=warn"}
	callsFrom := streamState(t, js, bus.CallsStream).LastSeq + 1
	normFrom := streamState(t, js, bus.NormalizedStream).LastSeq + 1
	dlqFrom := streamState(t, js, bus.DeadLetterStream).LastSeq + 1

	// Xinference answers with the marker and the address, and reports usage.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"c1","object":"chat.completion","model":"hr-assistant","choices":[{"index":0,"message":{"role":"assistant","content":"Noted %s, I will write to %s"},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":9,"total_tokens":30}}`, marker, email)
	}))
	t.Cleanup(up.Close)
	proxyAddr, collectAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	px := testkit.Start(t, append(append(os.Environ(), policy...), "CALLPIPE_PROXY_SPOOL_DIR="+t.TempDir()),
		"proxy", "--listen", proxyAddr, "--upstream", up.URL)
	px.WaitReady(t, proxyAddr, time.Minute)
	col := testkit.Start(t, append(os.Environ(), policy...), "collect", "--listen", collectAddr)
	col.WaitReady(t, collectAddr, time.Minute)

	// Through the proxy.
	prompt := fmt.Sprintf("%s: please e-mail %s the payslip", marker, email)
	body := fmt.Sprintf(`{"model":"hr-assistant","user":"u-hr","messages":[{"role":"user","content":%q}]}`, prompt)
	resp, err := http.Post("http://"+proxyAddr+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	proxyID := resp.Header.Get("X-Callpipe-Event-Id")
	if resp.StatusCode != 200 || proxyID == "" || !bytes.Contains(answer, []byte(marker)) {
		t.Fatalf("proxy answer %d (event %q): %s", resp.StatusCode, proxyID, answer)
	}

	// Through the collector, with no usage.
	now := time.Now().UTC()
	colID := run + "-collected"
	colEvent := fmt.Sprintf(`{"id":%q,"start_time":%q,"end_time":%q,"endpoint":"/v1/chat/completions","model":"HR-Assistant","user":"u-hr",`+
		`"request":{"model":"HR-Assistant","messages":[{"role":"system","content":"You answer HR questions."},{"role":"user","content":%q}]},`+
		`"response":{"choices":[{"message":{"role":"assistant","content":"Sent to %s (%s)"},"finish_reason":"stop"}]},`+
		`"metadata":{"ticket":"from %s"}}`,
		colID, now.Add(-2*time.Second).Format(time.RFC3339Nano), now.Format(time.RFC3339Nano), prompt, email, marker, email)
	resp, err = http.Post("http://"+collectAddr+"/v1/events", "application/json", strings.NewReader(colEvent))
	if err != nil {
		t.Fatal(err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("collector: %d %s", resp.StatusCode, reply)
	}
	// What normalize's tokenizer counts on the whole event.
	tok, err := transform.NewTokenizer("o200k_base", nil)
	if err != nil {
		t.Fatal(err)
	}
	whole, err := schema.Decode([]byte(colEvent), schema.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	wantIn, wantOut, _ := (&transform.Normalizer{Tokenizer: tok}).CountUsage(whole)
	if wantIn == 0 || wantOut == 0 {
		t.Fatalf("tokenizer counted %d/%d", wantIn, wantOut)
	}
	want := map[string][3]int64{proxyID: {21, 9, 30}, colID: {wantIn, wantOut, wantIn + wantOut}}

	// 1. The raw stream.
	raw := map[string][]byte{}
	testkit.WaitFor(t, time.Minute, "both events in CALLPIPE_CALLS", func() (bool, string) {
		for id, b := range streamMsgsByID(t, js, bus.CallsStream, callsFrom) {
			if _, ok := want[id]; ok {
				raw[id] = b
			}
		}
		return len(raw) == 2, fmt.Sprint(len(raw))
	})
	maskSet := capture.MaskSetVersion(capture.DefaultMasks)
	for id, b := range raw {
		if l := leaks(b); l != "" {
			t.Fatalf("raw stream: event %s holds %q: %s", id, l, b)
		}
		ev, err := schema.Decode(b, schema.DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		u := ev.Usage
		if ev.Request != nil || ev.Response != nil || u == nil || *u.PromptTokens != want[id][0] || *u.CompletionTokens != want[id][1] ||
			ev.Capture == nil || ev.Capture.Mode != capture.None || ev.Capture.MaskSet != maskSet || ev.Capture.Counted != (id == colID) {
			t.Fatalf("raw event %s: %s", id, b)
		}
	}

	// Downstream stages on the run's own subjects.
	rawSubject, normSubject := ar.subject+".online", bus.NormalizedSubjectPrefix+"."+run
	var lastCopy uint64
	for id, b := range raw {
		m := &nats.Msg{Subject: rawSubject, Data: b, Header: nats.Header{}}
		m.Header.Set(bus.HeaderMsgID, run+":"+id)
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		lastCopy = max(lastCopy, ack.Sequence)
	}
	stages := testkit.Start(t, ar.env(append(policy,
		"CALLPIPE_TRANSFORM_CONSUMER="+run+"-normalize", "CALLPIPE_TRANSFORM_SUBJECT="+ar.subject+".>",
		"CALLPIPE_REDIS_ADDR="+harness.Redis(t), "CALLPIPE_ARCHIVE_FLUSH_INTERVAL=500ms",
		"CALLPIPE_WORKER_LISTEN="+testkit.FreeAddr(t))...), "worker", "--stages", "normalize,archive")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(ctx, bus.CallsStream, run+"-normalize")
	})
	norm := map[string][]byte{}
	testkit.WaitFor(t, time.Minute, "both calls normalized", func() (bool, string) {
		for id, b := range streamMsgsByID(t, js, bus.NormalizedStream, normFrom) {
			if _, ok := want[id]; ok {
				norm[id] = b
			}
		}
		return len(norm) == 2, fmt.Sprint(len(norm))
	})
	for id, b := range norm {
		if l := leaks(b); l != "" {
			t.Fatalf("CALLPIPE_NORMALIZED: call %s holds %q: %s", id, l, b)
		}
		var c schema.Call
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		if w := want[id]; c.InputTokens != w[0] || c.OutputTokens != w[1] || c.TotalTokens != w[2] || c.Capture == nil ||
			c.Capture.Mode != capture.None || c.Capture.MaskSet != maskSet {
			t.Fatalf("normalized call %s: %s, want tokens %v", id, b, w)
		}
		m := &nats.Msg{Subject: normSubject + "." + c.Kind, Data: b, Header: nats.Header{}}
		m.Header.Set(bus.HeaderMsgID, run+":"+id)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	// Langfuse refuses the collected call's generation, so it is dead-lettered.
	lf := langfusetest.New(langfusetest.Options{})
	t.Cleanup(lf.Close)
	lf.SetEventFault(func(typ, bodyID string) (int, string) {
		if typ == "generation-create" && strings.Contains(bodyID, colID) {
			return 400, "Invalid request data"
		}
		return 0, ""
	})
	var lfMu sync.Mutex
	var lfBodies [][]byte
	rec := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		lfMu.Lock()
		lfBodies = append(lfBodies, b)
		lfMu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(b))
		lf.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(rec.Close)
	sinks := testkit.Start(t, ex.env(
		"CALLPIPE_NATS_URL="+natsURL, "CALLPIPE_LOG_LEVEL=warn", "CALLPIPE_WORKER_LISTEN="+testkit.FreeAddr(t),
		"CALLPIPE_CLICKHOUSE_CONSUMER="+run+"-clickhouse", "CALLPIPE_CLICKHOUSE_SUBJECT="+normSubject+".>",
		"CALLPIPE_CLICKHOUSE_FLUSH_INTERVAL=200ms",
		"CALLPIPE_LANGFUSE_CONSUMER="+run+"-langfuse", "CALLPIPE_LANGFUSE_SUBJECT="+normSubject+".>",
		"LANGFUSE_HOST="+rec.URL, "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
	), "worker", "--stages", "clickhouse,langfuse")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(ctx, bus.NormalizedStream, run+"-clickhouse")
		_ = js.DeleteConsumer(ctx, bus.NormalizedStream, run+"-langfuse")
	})

	// 2. ClickHouse.
	type chRow struct {
		id, text, mode, maskSet, source string
		in, out                         int64
	}
	var rows []chRow
	testkit.WaitFor(t, 2*time.Minute, "both calls in ClickHouse", func() (bool, string) {
		q := fmt.Sprintf(`SELECT id, concat(id, trace_id, session_id, user_id, instance, error, finish_reason, input_text, output_text,
			input, output, model_parameters, metadata, arrayStringConcat(tags, ',')), capture_mode, capture_mask_set, usage_source,
			input_tokens, output_tokens FROM %s.calls`, ex.db)
		r, err := ex.seed.Conn().Query(ctx, q)
		if err != nil {
			return false, err.Error()
		}
		defer r.Close()
		rows = rows[:0]
		for r.Next() {
			var x chRow
			if err := r.Scan(&x.id, &x.text, &x.mode, &x.maskSet, &x.source, &x.in, &x.out); err != nil {
				return false, err.Error()
			}
			rows = append(rows, x)
		}
		return len(rows) == 2, fmt.Sprint(len(rows), " rows\n", sinks.Out)
	})
	for _, x := range rows {
		if l := leaks([]byte(x.text)); l != "" {
			t.Fatalf("ClickHouse: call %s holds %q: %s", x.id, l, x.text)
		}
		wantSource := schema.UsageReported
		if x.id == colID {
			wantSource = schema.UsageEstimated
		}
		if w := want[x.id]; x.in != w[0] || x.out != w[1] || x.mode != capture.None || x.maskSet != maskSet || x.source != wantSource {
			t.Fatalf("ClickHouse row %+v, want tokens %v, mode none, mask set %s, usage %s", x, w, maskSet, wantSource)
		}
	}

	// 3. Langfuse (the proxy's call stored with its usage) and 4. the dead letter.
	testkit.WaitFor(t, time.Minute, "the proxy's call in Langfuse and the collected one dead-lettered", func() (bool, string) {
		_, stored := lf.Observations()[proxyID]
		n := 0
		for _, d := range deadLettersSince(t, js, dlqFrom) {
			if bytes.Contains(d.Data, []byte(colID)) && d.Stage == bus.StageLangfuse {
				n++
			}
		}
		return stored && n == 1, fmt.Sprintf("stored %v, %d dead letters\n%s", stored, n, sinks.Out)
	})
	obs := lf.Observations()[proxyID]
	if obs.UsageDetails["input"] != 21 || obs.UsageDetails["output"] != 9 {
		t.Fatalf("Langfuse usage of the proxy's call: %v", obs.UsageDetails)
	}
	if ids, _ := obs.Metadata["callpipe"].(map[string]any); fmt.Sprint(ids["capture"]) != fmt.Sprint(map[string]any{"mode": "none", "mask_set": maskSet}) {
		t.Fatalf("Langfuse metadata of the proxy's call: %v", obs.Metadata)
	}
	lfMu.Lock()
	sent := bytes.Join(lfBodies, []byte("\n"))
	lfMu.Unlock()
	if !bytes.Contains(sent, []byte(proxyID)) || !bytes.Contains(sent, []byte(colID)) {
		t.Fatalf("the Langfuse requests do not name both calls")
	}
	if l := leaks(sent); l != "" {
		t.Fatalf("Langfuse requests hold %q", l)
	}
	for _, d := range deadLettersSince(t, js, dlqFrom) {
		if l := leaks(d.Data); l != "" {
			t.Fatalf("dead letter %d (%s) holds %q: %s", d.Seq, d.Stage, l, d.Data)
		}
	}

	// 5. The archive, decompressed.
	ar.waitArchived(t, time.Minute, lastCopy)
	objs := ar.readArchive(t, now.Add(-time.Hour), now.Add(time.Hour))
	lines := 0
	for _, o := range objs {
		for _, l := range o.lines {
			if s := leaks(l); s != "" {
				t.Fatalf("archive object %s holds %q: %s", o.Key, s, l)
			}
			lines++
		}
	}
	if lines != 2 {
		t.Fatalf("%d archived lines, want 2", lines)
	}

	// 6. Exports: every format of the calls, and the archive's raw events.
	from, to := now.Add(-time.Hour).Truncate(time.Hour), now.Add(2*time.Hour).Truncate(time.Hour)
	for _, x := range []struct{ source, format string }{
		{"calls", "ndjson"}, {"calls", "csv"}, {"calls", "parquet"}, {"archive", "ndjson"},
	} {
		prefix := "capture-" + x.source + "-" + x.format
		p := startExport(t, ex, []string{"CALLPIPE_S3_BUCKET=" + archBucket, "CALLPIPE_ARCHIVE_PREFIX=" + ar.prefix},
			"export", "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339), "--source", x.source,
			"--format", x.format, "--dest", "s3://"+ex.bucket+"/"+prefix)
		if err := p.wait(t, 2*time.Minute); err != nil {
			t.Fatalf("export %s %s: %v\n%s", x.source, x.format, err, p.stderr.String())
		}
		m, parts := readExport(t, ex, prefix)
		var content []byte
		if x.source == "calls" {
			rs := decodeParts(t, m, parts)
			if content, err = json.Marshal(rs); err != nil {
				t.Fatal(err)
			}
			if len(rs) != 2 {
				t.Fatalf("export %s %s: %d rows, want 2", x.source, x.format, len(rs))
			}
			for _, r := range rs {
				if r.CaptureMode != capture.None || r.CaptureMaskSet != maskSet {
					t.Fatalf("export %s %s: row %s has capture %q %q", x.source, x.format, r.ID, r.CaptureMode, r.CaptureMaskSet)
				}
			}
		} else {
			for _, part := range parts {
				content = append(content, decompress(t, m.Compression, part)...)
			}
		}
		if !bytes.Contains(content, []byte(proxyID)) || !bytes.Contains(content, []byte(colID)) {
			t.Fatalf("export %s %s does not hold both calls: %s", x.source, x.format, content)
		}
		if l := leaks(content); l != "" {
			t.Fatalf("export %s %s holds %q", x.source, x.format, l)
		}
	}
	stages.Stop(t, 30*time.Second)
	sinks.Stop(t, 30*time.Second)
	px.Stop(t, 30*time.Second)
	col.Stop(t, 30*time.Second)
}

// streamMsgsByID reads stream from sequence from on and returns each
// message's bytes by the "id" of its JSON body.
func streamMsgsByID(t *testing.T, js jetstream.JetStream, stream string, from uint64) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	last := streamState(t, js, stream).LastSeq
	out := map[string][]byte{}
	for seq := from; seq <= last; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		// a message of CALLPIPE_NORMALIZED may carry a batch of calls
		items, err := bus.Items(m.Header, m.Data)
		if err != nil {
			items = [][]byte{m.Data}
		}
		for _, item := range items {
			var probe struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(item, &probe) == nil && probe.ID != "" {
				out[probe.ID] = item
			}
		}
	}
	return out
}

// deadLettersSince lists the dead letters from sequence from on.
func deadLettersSince(t *testing.T, js jetstream.JetStream, from uint64) []bus.DeadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dls, err := bus.ListDeadLetters(ctx, js, from, 0)
	if err != nil {
		t.Fatal(err)
	}
	return dls
}

// ingest.Publisher, what Go producers publish with, applies its capture
// policy before the event leaves the process: the stored event holds no
// prompt, its usage is counted, and its capture record is the policy's.
func TestPublisherAppliesCapturePolicy(t *testing.T) {
	nc, js := testkit.JetStream(t, harness.NATS(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, bus.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	tok, err := transform.NewTokenizer("o200k_base", nil)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := capture.New(capture.Options{Users: []string{"patient-*=none"}, Masks: capture.DefaultMasks,
		Count: (&transform.Normalizer{Tokenizer: tok}).CountUsage})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Capture: policy})
	if err != nil {
		t.Fatal(err)
	}
	from := streamState(t, js, bus.CallsStream).LastSeq + 1
	id := "pub-" + testkit.RandomHex(t, 5)
	ev := &schema.Event{ID: id, StartTime: time.Now().UTC(), Endpoint: "/v1/chat/completions", Model: "m", User: "patient-12",
		Request:  json.RawMessage(`{"messages":[{"role":"user","content":"ZEBRA-MARKER-4471 my results, to jane.roe@example.org"}]}`),
		Response: json.RawMessage(`{"choices":[{"message":{"role":"assistant","content":"Sent."},"finish_reason":"stop"}]}`)}
	if _, err := pub.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	stored := streamMsgsByID(t, js, bus.CallsStream, from)[id]
	got, err := schema.Decode(stored, schema.DefaultLimits())
	if err != nil {
		t.Fatalf("%v: %s", err, stored)
	}
	if bytes.Contains(stored, []byte("ZEBRA")) || bytes.Contains(stored, []byte("jane.roe")) || got.Usage == nil ||
		*got.Usage.PromptTokens == 0 || *got.Usage.CompletionTokens == 0 ||
		*got.Capture != (schema.Capture{Mode: capture.None, MaskSet: policy.MaskSet(), Counted: true}) {
		t.Fatalf("stored %s", stored)
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
