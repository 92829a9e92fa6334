package workload

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callpipe/callpipe/ingest/proxy"
	"github.com/callpipe/callpipe/internal/defaults"
)

// User is a caller: with an APIKey it authenticates like an Xinference client
// (the pipeline resolves the key to ID through Redis), without one it names
// itself in the request's "user" field.
type User struct {
	ID     string
	APIKey string
}

// DefaultUsers are the demo's callers: three with API keys, two by name.
func DefaultUsers() []User {
	return []User{
		{ID: "alice", APIKey: "xf-demoalice000000000000000000000000000000000000000"},
		{ID: "bob", APIKey: "xf-demobob00000000000000000000000000000000000000000"},
		{ID: "carol", APIKey: "xf-democarol000000000000000000000000000000000000000"},
		{ID: "dave"},
		{ID: "erin"},
	}
}

// Spec is a synthetic workload.
type Spec struct {
	BaseURL     string // the proxy (or any OpenAI-compatible server)
	Calls       int
	Concurrency int     // parallel clients; default 8
	Rate        float64 // calls per second; 0: as fast as the clients go
	Models      []Model
	Users       []User
	StreamShare float64 // share of chat calls that stream
	ErrorShare  float64 // share of chat calls the upstream fails (see ErrorPrompt)
	// AgentShare is the share of chat calls that start an agent run: 3–6
	// calls sharing a trace id, made one after another, with some steps
	// fanning out to 2 calls in parallel. A user's runs come in sessions of
	// 2–4 runs sharing a session id.
	AgentShare float64
	// BatchCalls is the size of one batch job (0: none): chat and embedding
	// calls sent with X-Callpipe-Source: batch and X-Callpipe-Batch-Id,
	// four at a time. They count in Calls.
	BatchCalls  int
	PromptWords int // mean words per prompt; default 40
	MaxTokens   int // max_tokens of chat calls; default 64
	Seed        uint64
	Client      *http.Client
}

// Counts is the ground truth for one model or user.
type Counts struct {
	Calls        int64 `json:"calls"`
	Errors       int64 `json:"errors"`
	InputTokens  int64 `json:"input_tokens"`  // of successful calls
	OutputTokens int64 `json:"output_tokens"` // of successful calls
}

func (c *Counts) add(o Counts) {
	c.Calls += o.Calls
	c.Errors += o.Errors
	c.InputTokens += o.InputTokens
	c.OutputTokens += o.OutputTokens
}

// Result is what a run sent and what the pipeline must therefore report.
type Result struct {
	Sent      int64             `json:"sent"`      // calls answered by the upstream (any status)
	Transport int64             `json:"transport"` // calls that failed before an answer (not in the pipeline)
	Total     Counts            `json:"total"`
	ByModel   map[string]Counts `json:"by_model"`
	ByUser    map[string]Counts `json:"by_user"`
	Started   time.Time         `json:"started"`
	Elapsed   time.Duration     `json:"elapsed"`
}

// Progress is a snapshot of a running workload.
type Progress struct {
	Done, Total int64
	Errors      int64
	Elapsed     time.Duration
}

type call struct {
	model     Model
	user      User
	body      []byte
	path      string
	stream    bool
	fail      bool
	traceID   string
	sessionID string
	batchID   string
	counts    Counts
}

// job is what one client does in order: its steps one after another, the
// calls of a step in parallel.
type job struct {
	steps [][]*call
}

func (j *job) calls() int {
	n := 0
	for _, st := range j.steps {
		n += len(st)
	}
	return n
}

// Run drives spec.Calls calls through spec.BaseURL and returns the ground
// truth. progress, if not nil, is called about once a second.
func Run(ctx context.Context, spec Spec, progress func(Progress)) (*Result, error) {
	if spec.Calls <= 0 {
		return nil, fmt.Errorf("workload: calls must be positive, got %d", spec.Calls)
	}
	if len(spec.Models) == 0 {
		spec.Models = DefaultModels()
	}
	if len(spec.Users) == 0 {
		spec.Users = DefaultUsers()
	}
	spec.Concurrency = defaults.IfNotPositive(spec.Concurrency, 8)
	spec.PromptWords = defaults.IfNotPositive(spec.PromptWords, 40)
	spec.MaxTokens = defaults.IfNotPositive(spec.MaxTokens, 64)
	client := spec.Client
	if client == nil {
		client = &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: spec.Concurrency}}
	}
	res := &Result{ByModel: map[string]Counts{}, ByUser: map[string]Counts{}, Started: time.Now()}
	var mu sync.Mutex
	var done, failed atomic.Int64
	var firstErr error

	jobs := make(chan *job, spec.Concurrency)
	go func() {
		defer close(jobs)
		plan(ctx, spec, jobs)
	}()

	stopProgress := make(chan struct{})
	var progressDone sync.WaitGroup
	if progress != nil {
		progressDone.Go(func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					progress(Progress{Done: done.Load(), Total: int64(spec.Calls), Errors: failed.Load(), Elapsed: time.Since(res.Started)})
				}
			}
		})
	}

	do := func(c *call) {
		status, err := send(ctx, client, spec.BaseURL, c)
		mu.Lock()
		switch {
		case err != nil:
			res.Transport++
			if firstErr == nil {
				firstErr = err
			}
		default:
			got := c.counts
			got.Calls = 1
			if status >= 400 {
				got = Counts{Calls: 1, Errors: 1}
				failed.Add(1)
			}
			res.Sent++
			res.Total.add(got)
			m := res.ByModel[c.model.UID]
			m.add(got)
			res.ByModel[c.model.UID] = m
			u := res.ByUser[c.user.ID]
			u.add(got)
			res.ByUser[c.user.ID] = u
		}
		mu.Unlock()
		done.Add(1)
	}
	var wg sync.WaitGroup
	for range spec.Concurrency {
		wg.Go(func() {
			for j := range jobs {
				for _, step := range j.steps {
					var par sync.WaitGroup
					for _, c := range step[1:] {
						par.Go(func() { do(c) })
					}
					do(step[0])
					par.Wait()
				}
			}
		})
	}
	wg.Wait()
	close(stopProgress)
	progressDone.Wait()
	res.Elapsed = time.Since(res.Started)
	if progress != nil {
		progress(Progress{Done: done.Load(), Total: int64(spec.Calls), Errors: failed.Load(), Elapsed: res.Elapsed})
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("workload stopped after %d of %d calls: %w", done.Load(), spec.Calls, err)
	}
	if res.Transport > 0 {
		return res, fmt.Errorf("workload: %d calls got no answer, first: %w", res.Transport, firstErr)
	}
	return res, nil
}

// plan emits jobs of spec.Calls calls in all, paced to spec.Rate: single
// calls, agent runs and, a third of the way in, the batch job.
func plan(ctx context.Context, spec Spec, out chan<- *job) {
	rng := rand.New(rand.NewPCG(spec.Seed, 0x63616c6c70697065))
	var interval time.Duration
	if spec.Rate > 0 {
		interval = time.Duration(float64(time.Second) / spec.Rate)
	}
	next := time.Now()
	sessions := map[string]*session{} // by user: the session of the user's next agent run
	batchAt := -1
	if spec.BatchCalls > 0 {
		batchAt = spec.Calls / 3
	}
	for i := 0; i < spec.Calls; {
		var j *job
		switch {
		case batchAt >= 0 && i >= batchAt:
			j = batchJob(rng, spec, i, min(spec.BatchCalls, spec.Calls-i))
			batchAt = -1
		default:
			c := newCall(rng, spec, i)
			j = &job{steps: [][]*call{{c}}}
			if c.model.Kind == KindChat && !c.fail && rng.Float64() < spec.AgentShare && spec.Calls-i >= 3 {
				j = agentRun(rng, spec, c, i, min(3+rng.IntN(4), spec.Calls-i), sessions)
			}
		}
		i += j.calls()
		if interval > 0 {
			next = next.Add(interval * time.Duration(j.calls()))
			if d := time.Until(next); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
		}
		select {
		case out <- j:
		case <-ctx.Done():
			return
		}
	}
}

type session struct {
	id   string
	runs int // agent runs left in it
}

// agentRun makes first the first of n calls of an agent run: the steps
// after it are one call, or two in parallel (an agent's parallel tool
// calls), all of the same user and model under one trace id, in the user's
// current session.
func agentRun(rng *rand.Rand, spec Spec, first *call, i, n int, sessions map[string]*session) *job {
	trace := fmt.Sprintf("agent-%d-%d", spec.Seed, i)
	s := sessions[first.user.ID]
	if s == nil || s.runs == 0 {
		s = &session{id: fmt.Sprintf("session-%d-%d", spec.Seed, i), runs: 2 + rng.IntN(3)}
		sessions[first.user.ID] = s
	}
	s.runs--
	first.traceID, first.sessionID = trace, s.id
	j := &job{steps: [][]*call{{first}}}
	for made := 1; made < n; {
		width := 1
		if n-made >= 2 && rng.Float64() < 0.35 {
			width = 2
		}
		step := make([]*call, width)
		for k := range step {
			c := newChat(rng, spec, first.model, first.user, i+made, false)
			c.traceID, c.sessionID = trace, s.id
			step[k] = c
			made++
		}
		j.steps = append(j.steps, step)
	}
	return j
}

// batchJob is n calls of one batch job, four at a time, of one user.
func batchJob(rng *rand.Rand, spec Spec, i, n int) *job {
	id := fmt.Sprintf("batch-%d-%d", spec.Seed, i)
	u := spec.Users[rng.IntN(len(spec.Users))]
	j := &job{}
	var models []Model // a batch job embeds or chats
	for _, m := range spec.Models {
		if m.Kind == KindChat || m.Kind == KindEmbedding {
			models = append(models, m)
		}
	}
	if len(models) == 0 {
		models = spec.Models
	}
	for made := 0; made < n; made += 4 {
		step := make([]*call, min(4, n-made))
		for k := range step {
			m := models[rng.IntN(len(models))]
			var c *call
			switch m.Kind {
			case KindEmbedding:
				c = newEmbedding(rng, spec, m, u)
			case KindRerank:
				c = newRerank(rng, spec, m, u)
			default:
				c = newChat(rng, spec, m, u, i+made+k, false)
			}
			c.batchID = id
			step[k] = c
		}
		j.steps = append(j.steps, step)
	}
	return j
}

func newCall(rng *rand.Rand, spec Spec, i int) *call {
	m := spec.Models[rng.IntN(len(spec.Models))]
	u := spec.Users[rng.IntN(len(spec.Users))]
	switch m.Kind {
	case KindEmbedding:
		return newEmbedding(rng, spec, m, u)
	case KindRerank:
		return newRerank(rng, spec, m, u)
	default:
		return newChat(rng, spec, m, u, i, rng.Float64() < spec.ErrorShare)
	}
}

func newEmbedding(rng *rand.Rand, spec Spec, m Model, u User) *call {
	n := 1 + rng.IntN(3)
	inputs := make([]string, n)
	var tokens int64
	for j := range inputs {
		inputs[j] = words(rng, spec.PromptWords/2+1)
		tokens += Tokens(inputs[j])
	}
	body := map[string]any{"model": m.UID, "input": inputs}
	if u.APIKey == "" {
		body["user"] = u.ID
	}
	return &call{model: m, user: u, path: "/v1/embeddings", body: mustJSON(body), counts: Counts{InputTokens: tokens}}
}

func newRerank(rng *rand.Rand, spec Spec, m Model, u User) *call {
	q := words(rng, 8)
	docs := make([]string, 2+rng.IntN(4))
	for j := range docs {
		docs[j] = words(rng, spec.PromptWords/2+1)
	}
	body := map[string]any{"model": m.UID, "query": q, "documents": docs}
	if u.APIKey == "" {
		body["user"] = u.ID
	}
	return &call{model: m, user: u, path: "/v1/rerank", body: mustJSON(body), counts: Counts{InputTokens: RerankTokens(q, docs)}}
}

func newChat(rng *rand.Rand, spec Spec, m Model, u User, i int, fail bool) *call {
	system := "You are a helpful assistant."
	prompt := fmt.Sprintf("call %d: %s", i, words(rng, spec.PromptWords/2+rng.IntN(spec.PromptWords+1)))
	if fail {
		prompt += " " + ErrorPrompt
	}
	stream := rng.Float64() < spec.StreamShare
	body := map[string]any{
		"model":       m.UID,
		"messages":    []map[string]string{{"role": "system", "content": system}, {"role": "user", "content": prompt}},
		"max_tokens":  spec.MaxTokens,
		"temperature": 0.7,
		"stream":      stream,
	}
	if u.APIKey == "" {
		body["user"] = u.ID
	}
	full := system + " " + prompt + " "
	answer := Answer(full, spec.MaxTokens)
	return &call{model: m, user: u, path: "/v1/chat/completions", body: mustJSON(body), stream: stream, fail: fail,
		counts: Counts{InputTokens: Tokens(full), OutputTokens: Tokens(answer)}}
}

func words(rng *rand.Rand, n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = vocabulary[rng.IntN(len(vocabulary))]
	}
	return strings.Join(w, " ")
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of strings and numbers are marshalled here
	}
	return b
}

// send makes one call and reads the whole answer, as a client would.
func send(ctx context.Context, client *http.Client, base string, c *call) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+c.path, bytes.NewReader(c.body))
	if err != nil {
		return 0, fmt.Errorf("workload request %s: %w", c.path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.user.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.user.APIKey)
	}
	if c.traceID != "" {
		req.Header.Set(proxy.HeaderTraceID, c.traceID)
	}
	if c.sessionID != "" {
		req.Header.Set(proxy.HeaderSessionID, c.sessionID)
	}
	if c.batchID != "" {
		req.Header.Set(proxy.HeaderSource, "batch")
		req.Header.Set(proxy.HeaderBatchID, c.batchID)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("workload %s %s: %w", c.model.UID, c.path, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, fmt.Errorf("workload %s %s: read answer: %w", c.model.UID, c.path, err)
	}
	return resp.StatusCode, nil
}
