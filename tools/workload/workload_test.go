package workload

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
)

// usageRecorder sums the usage the upstream reports, per model, by reading
// every answer — the independent ground truth the generator must match.
type usageRecorder struct {
	mu     sync.Mutex
	counts map[string]Counts
	traces map[string]int
}

func (u *usageRecorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		body := rec.Body.Bytes()
		w.Write(body)

		var c Counts
		var model string
		c.Calls = 1
		if rec.Code >= 400 {
			c.Errors = 1
		}
		if strings.HasPrefix(rec.Header().Get("Content-Type"), "text/event-stream") {
			var text strings.Builder
			sc := bufio.NewScanner(bytes.NewReader(body))
			for sc.Scan() {
				line := strings.TrimSpace(sc.Text())
				if !strings.HasPrefix(line, "data: ") || line == "data: [DONE]" {
					continue
				}
				var ch struct {
					Model   string `json:"model"`
					Choices []struct {
						Delta struct{ Content string } `json:"delta"`
					} `json:"choices"`
				}
				if err := json.Unmarshal([]byte(line[6:]), &ch); err != nil {
					panic(err)
				}
				model = ch.Model
				for _, choice := range ch.Choices {
					text.WriteString(choice.Delta.Content)
				}
			}
			c.OutputTokens = Tokens(text.String())
			// The stream does not carry usage unless asked: the prompt side
			// comes from the request.
			var req request
			json.Unmarshal(mustBody(r), &req)
			c.InputTokens = Tokens(req.prompt())
		} else if rec.Code < 400 {
			var ans struct {
				Model string           `json:"model"`
				Usage map[string]int64 `json:"usage"`
				Meta  struct {
					Tokens map[string]int64 `json:"tokens"`
				} `json:"meta"`
			}
			if err := json.Unmarshal(body, &ans); err != nil {
				panic(err)
			}
			model = ans.Model
			if ans.Meta.Tokens != nil {
				model = "rerank"
				c.InputTokens = ans.Meta.Tokens["input_tokens"]
			} else {
				c.InputTokens = ans.Usage["prompt_tokens"]
				c.OutputTokens = ans.Usage["completion_tokens"]
			}
		} else {
			var req request
			json.Unmarshal(mustBody(r), &req)
			model = req.Model
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		if model == "rerank" {
			var req request
			json.Unmarshal(mustBody(r), &req)
			model = req.Model
		}
		cur := u.counts[model]
		cur.add(c)
		u.counts[model] = cur
		if t := r.Header.Get("X-Callpipe-Trace-Id"); t != "" {
			u.traces[t]++
		}
	})
}

func mustBody(r *http.Request) []byte {
	b, _ := io.ReadAll(r.Body)
	return b
}

func TestRunMatchesWhatTheUpstreamAnswered(t *testing.T) {
	rec := &usageRecorder{counts: map[string]Counts{}, traces: map[string]int{}}
	up := &Upstream{Models: DefaultModels()}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		r2 := r.Clone(r.Context())
		r2.Body = io.NopCloser(bytes.NewReader(body))
		rec.wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { up.ServeHTTP(w, r) })).ServeHTTP(w, r2)
	}))
	defer srv.Close()

	res, err := Run(context.Background(), Spec{BaseURL: srv.URL, Calls: 600, Concurrency: 6, StreamShare: 0.5,
		ErrorShare: 0.05, AgentShare: 0.2, Seed: 7}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 600 || res.Total.Calls != 600 {
		t.Fatalf("sent %d, total calls %d; want 600", res.Sent, res.Total.Calls)
	}
	if res.Total.Errors == 0 || res.Total.Errors > 100 {
		t.Fatalf("errors = %d, want a few (5%% of chat calls)", res.Total.Errors)
	}
	var byUser Counts
	for _, c := range res.ByUser {
		byUser.add(c)
	}
	if byUser != res.Total {
		t.Fatalf("per-user sum %+v != total %+v", byUser, res.Total)
	}
	for model, want := range rec.counts {
		if got := res.ByModel[model]; got != want {
			t.Errorf("model %s: generator says %+v, upstream answered %+v", model, got, want)
		}
	}
	if len(rec.counts) != len(DefaultModels()) {
		t.Errorf("models seen by the upstream: %d, want %d", len(rec.counts), len(DefaultModels()))
	}
	if len(rec.traces) == 0 {
		t.Fatal("no agent runs: AgentShare 0.2 must make calls sharing a trace id")
	}
	for trace, n := range rec.traces {
		if n != 3 {
			t.Errorf("trace %s has %d calls, want 3", trace, n)
		}
	}
}

func TestUpstreamErrorsLikeXinference(t *testing.T) {
	up := &Upstream{Models: DefaultModels()}
	for _, tc := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"nope","messages":[]}`},
		{"/v1/embeddings", `{"model":"qwen2.5-instruct","input":"x"}`},
		{"/v1/chat/completions", `{"model":`},
	} {
		w := httptest.NewRecorder()
		up.ServeHTTP(w, httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body)))
		var ans struct{ Detail string }
		if w.Code != 400 || json.Unmarshal(w.Body.Bytes(), &ans) != nil || ans.Detail == "" {
			t.Errorf("%s %s: %d %s; want 400 with a detail", tc.path, tc.body, w.Code, w.Body)
		}
	}
}

func TestChatEventIsAValidEvent(t *testing.T) {
	start := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	for _, e := range []ChatEvent{
		{ID: "a", Model: "m", User: "u", Start: start, Latency: time.Second, TTFT: 100 * time.Millisecond, Prompt: Filler(300), Answer: "ok", PromptTokens: 5, CompletionTokens: 2},
		{ID: "b", Model: "m", APIKey: "xf-key", Start: start, Latency: time.Second, Prompt: "p", Answer: "a", PromptTokens: 1, CompletionTokens: 1},
	} {
		line := e.Append(nil)
		if line[len(line)-1] != '\n' {
			t.Fatal("no newline")
		}
		ev, err := schema.Decode(line[:len(line)-1], schema.DefaultLimits())
		if err != nil {
			t.Fatalf("event %s: %v\n%s", e.ID, err, line)
		}
		if ev.ID != e.ID || ev.Model != e.Model || ev.User != e.User || *ev.Usage.TotalTokens != e.PromptTokens+e.CompletionTokens ||
			!ev.StartTime.Equal(start) || ev.EndTime.Sub(ev.StartTime) != time.Second || ev.Stream != (e.TTFT > 0) {
			t.Fatalf("decoded %+v from %s", ev, line)
		}
	}
	if len(Filler(1000)) != 1000 {
		t.Fatal("Filler length")
	}
}
