// Package langfusetest is an in-process Langfuse server for tests. It
// enforces the published contract of the ingestion API (the Fern definitions
// and server rules summarized in shared/reference/langfuse/NOTES.md): Basic
// auth, the {"batch":[...]} shape, per-event validation with 207 answers,
// the 4.5 MB body limit, v4's "Event type not accepted"; it stores accepted
// events like Langfuse's S3 layout (per entity type and body.id, one object
// per envelope id) and merges them with Langfuse's rules, so tests can assert
// what a Langfuse user would see. Faults can be injected: queued or random
// request-level errors (429 with Retry-After, 5xx) and per-event errors.
package langfusetest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxBodyBytes is the route's Next.js body limit ("4.5mb").
const MaxBodyBytes = 4_500_000

// Fault is a request-level answer given instead of processing a request.
type Fault struct {
	Status     int           // e.g. 429, 500, 503; 0 processes the request normally (after Delay)
	RetryAfter time.Duration // sent as Retry-After (whole seconds, rounded up) when > 0
	// Delay holds the answer back this long (a slow server). With Status 0
	// the request is still processed and stored: a client that times out
	// meanwhile resends events the server already has.
	Delay time.Duration
}

// EventFault decides a per-event error for an event that passed validation,
// given its type and body.id: status 0 means none; otherwise the event is
// answered with status and message inside the 207 and not stored. It runs
// under the server's lock.
type EventFault func(typ, bodyID string) (status int, message string)

// Options configure a Server.
type Options struct {
	PublicKey string // default pk-lf-test
	SecretKey string // default sk-lf-test
	Version   string // reported by /api/public/health; default 3.225.4. 4.x turns on events_only mode.
	// ProjectID and ProjectName are the keys' project, as GET
	// /api/public/projects reports it; default proj-test and callpipe-test.
	ProjectID, ProjectName string
	// TLS serves https only, with httptest's certificate (Certificate()
	// returns it, to trust as a CA).
	TLS bool
	// OpenAPI, when set, checks every ingestion request body against this
	// Langfuse definition (see LoadOpenAPI); mismatches are listed by Violations.
	OpenAPI *OpenAPI
}

// Request is the log entry of one ingestion or OTLP request.
type Request struct {
	Time   time.Time
	Path   string
	Status int
	Events int // events (ingestion) or spans (OTLP) in a processed request
	Bytes  int
	Header http.Header
	// Delayed is how long a slow-server fault held the answer back.
	Delayed time.Duration
}

// Server is a running test server; Close it when done.
type Server struct {
	*httptest.Server

	mu          sync.Mutex
	pk, sk      string
	version     string
	projectID   string
	projectName string
	faults      []Fault
	failRate    float64
	failWith    []Fault
	eventFault  EventFault
	spanFault   SpanFault
	maxBody     int
	rng         *rand.Rand

	// stored[entity][bodyID][envelopeID] = event
	stored     map[string]map[string]map[string]storedEvent
	requests   []Request
	dropped    int // accepted events without body.id (Langfuse never stores them)
	accepted   int
	rejected   int
	eventSeen  map[string]int // envelope id → times accepted
	otlpSpans  int
	openapi    *OpenAPI
	violations []string
	// merged views, dropped for an id when one of its events is stored
	traceCache map[string]Trace
	obsCache   map[string]Observation
}

type storedEvent struct {
	typ  string
	ts   time.Time
	body rawBody
}

// New starts a server.
func New(o Options) *Server {
	if o.PublicKey == "" {
		o.PublicKey = "pk-lf-test"
	}
	if o.SecretKey == "" {
		o.SecretKey = "sk-lf-test"
	}
	if o.Version == "" {
		o.Version = "3.225.4"
	}
	if o.ProjectID == "" {
		o.ProjectID = "proj-test"
	}
	if o.ProjectName == "" {
		o.ProjectName = "callpipe-test"
	}
	s := &Server{
		pk: o.PublicKey, sk: o.SecretKey, version: o.Version, maxBody: MaxBodyBytes, openapi: o.OpenAPI,
		projectID: o.ProjectID, projectName: o.ProjectName,
		rng:        rand.New(rand.NewPCG(1, 2)),
		stored:     map[string]map[string]map[string]storedEvent{},
		eventSeen:  map[string]int{},
		traceCache: map[string]Trace{}, obsCache: map[string]Observation{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/public/health", s.health)
	mux.HandleFunc("/api/public/projects", s.projects)
	mux.HandleFunc("/api/public/ingestion", s.ingestion)
	mux.HandleFunc("/api/public/otel/v1/traces", s.otel)
	if o.TLS {
		s.Server = httptest.NewTLSServer(mux)
	} else {
		s.Server = httptest.NewServer(mux)
	}
	return s
}

// URL is the base URL (Langfuse host).
func (s *Server) Host() string { return s.Server.URL }

// SetCredentials changes the keys the server accepts.
func (s *Server) SetCredentials(publicKey, secretKey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pk, s.sk = publicKey, secretKey
}

// SetVersion changes the version reported by /api/public/health (4.x also
// turns on v4's events_only mode for /api/public/ingestion).
func (s *Server) SetVersion(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version = v
}

// QueueFaults makes the next requests answer these faults, in order.
func (s *Server) QueueFaults(f ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f...)
}

// SetFailureRate answers a fraction rate of requests with one of faults,
// chosen at random (deterministic seed).
func (s *Server) SetFailureRate(rate float64, faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failRate, s.failWith = rate, faults
}

// SetEventFault installs a per-event fault hook (nil removes it).
func (s *Server) SetEventFault(f EventFault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eventFault = f
}

// SpanFault decides whether the OTLP endpoint rejects a valid span, given
// its hex span id and attributes: a non-empty reason leaves the span
// unstored and counts it in the answer's partial_success (rejected_spans,
// and the last reason as error_message), which, as in OTLP, does not say
// which spans were rejected. It runs under the server's lock.
type SpanFault func(spanID string, attributes map[string]any) (reason string)

// SetSpanFault installs an OTLP span fault hook (nil removes it).
func (s *Server) SetSpanFault(f SpanFault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spanFault = f
}

// SetMaxBodyBytes changes the body limit (default MaxBodyBytes).
func (s *Server) SetMaxBodyBytes(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxBody = n
}

// Requests returns the log of ingestion requests.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Counts are accepted (201) and rejected (per-event error) events so far,
// and accepted events dropped for lack of body.id.
func (s *Server) Counts() (accepted, rejected, dropped int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted, s.rejected, s.dropped
}

// OTLPSpans is the number of spans accepted on the OTLP endpoint.
func (s *Server) OTLPSpans() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.otlpSpans
}

// Envelopes is the number of stored envelope objects for an entity
// ("trace" or "observation") and body id: 1 after any number of resends
// with stable envelope ids.
func (s *Server) Envelopes(entity, bodyID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.stored[entity][bodyID])
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	v := s.version
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"status": "OK", "version": v})
}

// projects answers GET /api/public/projects (OpenAPI projects_get): the
// project of a project-scoped key, as the Projects schema.
func (s *Server) projects(w http.ResponseWriter, r *http.Request) {
	if !methodAllowed(w, r, http.MethodGet) {
		return
	}
	s.mu.Lock()
	level := s.accessLevel(r.Header.Get("Authorization"))
	id, name := s.projectID, s.projectName
	s.mu.Unlock()
	switch level {
	case "":
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Invalid credentials"})
		return
	case "scores":
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "Invalid API key. Are you using an organization key?"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": []map[string]any{{
		"id": id, "name": name, "organization": map[string]string{"id": "org-test", "name": "callpipe tests"}, "metadata": map[string]any{},
	}}})
}

// methodAllowed reports whether r uses method, and else answers 405 as
// Langfuse does.
func methodAllowed(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"message": "Method not allowed"})
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) logRequest(r *http.Request, status, events, n int) {
	s.requests = append(s.requests, Request{Time: time.Now(), Path: r.URL.Path, Status: status, Events: events, Bytes: n, Header: r.Header.Clone()})
}

// accessLevel is "project" for Basic pk:sk, "scores" for Bearer pk, "" otherwise.
func (s *Server) accessLevel(h string) string {
	if b, ok := strings.CutPrefix(h, "Basic "); ok {
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b))
		if err != nil {
			return ""
		}
		pk, sk, ok := strings.Cut(string(raw), ":")
		// Langfuse finds the key by its secret; a wrong public key only logs.
		if ok && sk == s.sk && pk != "" {
			return "project"
		}
		return ""
	}
	if b, ok := strings.CutPrefix(h, "Bearer "); ok && strings.TrimSpace(b) == s.pk {
		return "scores"
	}
	return ""
}

func (s *Server) ingestion(w http.ResponseWriter, r *http.Request) {
	if !methodAllowed(w, r, http.MethodPost) {
		return
	}
	s.mu.Lock()
	level := s.accessLevel(r.Header.Get("Authorization"))
	maxBody := s.maxBody
	fault := s.nextFault()
	s.mu.Unlock()

	data, err := io.ReadAll(io.LimitReader(r.Body, int64(maxBody)+1))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": "Invalid request data", "errors": []string{err.Error()}})
		return
	}
	fail := func(status int, v any) {
		s.mu.Lock()
		s.logRequest(r, status, 0, len(data))
		s.mu.Unlock()
		writeJSON(w, status, v)
	}
	if level == "" {
		fail(http.StatusUnauthorized, map[string]string{"message": "Invalid credentials"})
		return
	}
	if s.applyFault(w, fault, fail) {
		return
	}
	if len(data) > maxBody {
		fail(http.StatusRequestEntityTooLarge, map[string]string{"message": "Body exceeded 4.5mb limit"})
		return
	}
	s.checkOpenAPI(r.URL.Path, r.Header.Get("Content-Type"), data)
	batch, perr := parseBatch(data)
	if perr != "" {
		fail(http.StatusBadRequest, map[string]any{"message": "Invalid request data", "errors": []string{perr}})
		return
	}

	type success struct {
		ID     string `json:"id"`
		Status int    `json:"status"`
	}
	type failure struct {
		ID      string `json:"id"`
		Status  int    `json:"status"`
		Message string `json:"message"`
		Error   any    `json:"error,omitempty"`
	}
	resp := struct {
		Successes []success `json:"successes"`
		Errors    []failure `json:"errors"`
	}{Successes: []success{}, Errors: []failure{}}

	s.mu.Lock()
	defer s.mu.Unlock()
	v4 := majorVersion(s.version) >= 4
	for i := range batch {
		ev, verr := validateEvent(&batch[i])
		id := ev.ID
		if verr != "" {
			resp.Errors = append(resp.Errors, failure{ID: id, Status: 400, Message: "Invalid request data", Error: verr})
			s.rejected++
			continue
		}
		if ev.Type == "dataset-run-item-create" {
			resp.Errors = append(resp.Errors, failure{ID: id, Status: 400, Message: "Invalid request data", Error: "dataset-run-item-create is internal"})
			s.rejected++
			continue
		}
		if level == "scores" && ev.Type != "score-create" && ev.Type != "sdk-log" {
			resp.Errors = append(resp.Errors, failure{ID: id, Status: 401, Message: "Authentication error", Error: "Access Scope Denied"})
			s.rejected++
			continue
		}
		if v4 && ev.Type != "score-create" && ev.Type != "sdk-log" {
			resp.Errors = append(resp.Errors, failure{ID: id, Status: 400, Message: "Event type not accepted",
				Error: "Event type " + ev.Type + " is not accepted in events_only mode"})
			s.rejected++
			continue
		}
		if s.eventFault != nil {
			if st, msg := s.eventFault(ev.Type, ev.BodyID); st != 0 {
				resp.Errors = append(resp.Errors, failure{ID: id, Status: st, Message: msg, Error: msg})
				s.rejected++
				continue
			}
		}
		s.store(ev)
		s.accepted++
		resp.Successes = append(resp.Successes, success{ID: id, Status: 201})
	}
	s.logRequest(r, http.StatusMultiStatus, len(batch), len(data))
	if fault != nil {
		s.requests[len(s.requests)-1].Delayed = fault.Delay
	}
	writeJSON(w, http.StatusMultiStatus, resp)
}

// nextFault is the fault for the next request, if any (call with s.mu held).
func (s *Server) nextFault() *Fault {
	if len(s.faults) > 0 {
		f := s.faults[0]
		s.faults = s.faults[1:]
		return &f
	}
	if s.failRate > 0 && len(s.failWith) > 0 && s.rng.Float64() < s.failRate {
		f := s.failWith[s.rng.IntN(len(s.failWith))]
		return &f
	}
	return nil
}

// applyFault holds a request for the fault's delay, then answers its status
// (true: the answer is written). A nil fault does nothing.
func (s *Server) applyFault(w http.ResponseWriter, f *Fault, fail func(int, any)) bool {
	if f == nil {
		return false
	}
	if f.Delay > 0 {
		time.Sleep(f.Delay)
	}
	if f.Status == 0 {
		return false
	}
	s.writeFault(w, *f, fail)
	return true
}

// writeFault answers a fault: 429 like Langfuse Cloud's rate limiter
// (Retry-After, X-RateLimit-*, the documented body), others like the S3
// upload failure.
func (s *Server) writeFault(w http.ResponseWriter, f Fault, fail func(int, any)) {
	if f.Status == http.StatusTooManyRequests {
		secs := int64((f.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		w.Header().Set("X-RateLimit-Limit", "1000")
		w.Header().Set("X-RateLimit-Remaining", "0")
		reset := time.Now().Add(time.Duration(secs) * time.Second).UTC().Format(time.RFC3339)
		w.Header().Set("X-RateLimit-Reset", reset)
		fail(f.Status, map[string]any{"message": "Rate limit exceeded", "code": "rate_limited",
			"details": map[string]any{"retryAfterSeconds": secs, "limit": 1000, "remaining": 0, "resetAt": reset}})
		return
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((f.RetryAfter+time.Second-1)/time.Second), 10))
	}
	fail(f.Status, map[string]any{"message": "Failed to upload events to blob storage, aborting event processing"})
}

func majorVersion(v string) int {
	major, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	n, _ := strconv.Atoi(major)
	return n
}

func entityOf(typ string) string {
	switch typ {
	case "trace-create":
		return "trace"
	case "score-create":
		return "score"
	case "sdk-log":
		return ""
	default:
		return "observation"
	}
}

// store keeps ev like Langfuse's S3 upload: one object per
// (entity, body.id, envelope id), overwritten by a resend.
func (s *Server) store(ev envelope) {
	s.eventSeen[ev.ID]++
	ent := entityOf(ev.Type)
	if ent == "" {
		return // sdk-log is logged and dropped
	}
	bid := ev.BodyID
	if bid == "" {
		s.dropped++ // processEventBatch skips it, yet it was reported as 201
		return
	}
	byID := s.stored[ent]
	if byID == nil {
		byID = map[string]map[string]storedEvent{}
		s.stored[ent] = byID
	}
	if byID[bid] == nil {
		byID[bid] = map[string]storedEvent{}
	}
	byID[bid][ev.ID] = storedEvent{typ: ev.Type, ts: ev.Timestamp, body: ev.Body}
	if ent == "trace" {
		delete(s.traceCache, bid)
	} else {
		delete(s.obsCache, bid)
	}
}

// merged applies Langfuse's merge (utils.ts overwriteObject) to the stored
// events of one entity, in envelope timestamp order, creates first on ties.
func merged(evs map[string]storedEvent, immutable ...string) map[string]any {
	list := make([]storedEvent, 0, len(evs))
	ids := make([]string, 0, len(evs))
	for id := range evs {
		ids = append(ids, id)
	}
	sort.Strings(ids) // deterministic order beyond the documented keys
	for _, id := range ids {
		list = append(list, evs[id])
	}
	sort.SliceStable(list, func(i, j int) bool {
		if !list[i].ts.Equal(list[j].ts) {
			return list[i].ts.Before(list[j].ts)
		}
		return strings.HasSuffix(list[i].typ, "-create") && !strings.HasSuffix(list[j].typ, "-create")
	})
	out := map[string]any{}
	for n, e := range list {
		for k, rv := range e.body {
			v := decode(rv)
			if v == nil {
				continue
			}
			if n > 0 && contains(immutable, k) {
				if _, ok := out[k]; ok {
					continue
				}
			}
			switch k {
			case "metadata":
				out[k] = deepMerge(out[k], v)
			case "tags":
				out[k] = unionTags(out[k], v)
			case "input", "output":
				if truthy(v) {
					out[k] = v
				}
			default:
				if m, ok := v.(map[string]any); ok && len(m) == 0 {
					continue // empty objects are ignored
				}
				out[k] = v
			}
		}
	}
	return out
}

// decode turns a stored raw value into what Langfuse's merge sees.
func decode(raw json.RawMessage) any {
	if len(raw) == 0 {
		return nil
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return nil
	}
	return v
}

// parseBatch reads {"batch":[...], "metadata"?: any} in one pass, leaving
// each event raw; it returns a zod-like message when the shape is wrong.
func parseBatch(data []byte) ([]wireEvent, string) {
	d := json.NewDecoder(bytes.NewReader(data))
	tok, err := d.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, "Expected object"
	}
	var batch []wireEvent
	found := false
	for d.More() {
		kt, err := d.Token()
		if err != nil {
			return nil, err.Error()
		}
		if key, _ := kt.(string); key != "batch" {
			var skip json.RawMessage
			if err := d.Decode(&skip); err != nil {
				return nil, err.Error()
			}
			continue
		}
		tok, err := d.Token()
		if err != nil || tok != json.Delim('[') {
			return nil, "batch: Expected array"
		}
		found = true
		for d.More() {
			var ev wireEvent
			if err := d.Decode(&ev); err != nil {
				var te *json.UnmarshalTypeError
				if !errors.As(err, &te) {
					return nil, err.Error() // not JSON: the whole request is refused
				}
				ev.err = err // a wrong type inside one event: that event fails validation
			}
			batch = append(batch, ev)
		}
		if _, err := d.Token(); err != nil {
			return nil, err.Error()
		}
	}
	if _, err := d.Token(); err != nil {
		return nil, err.Error()
	}
	if !found {
		return nil, "batch: Required"
	}
	return batch, ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func truthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case string:
		return x != ""
	case bool:
		return x
	case float64:
		return x != 0
	case json.Number:
		return x.String() != "0"
	}
	return true
}

func deepMerge(a, b any) any {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if !aok || !bok {
		if bok && len(bm) == 0 {
			return a
		}
		return b
	}
	out := make(map[string]any, len(am)+len(bm))
	for k, v := range am {
		out[k] = v
	}
	for k, v := range bm {
		out[k] = deepMerge(out[k], v)
	}
	return out
}

func unionTags(a, b any) any {
	set := map[string]bool{}
	for _, x := range []any{a, b} {
		if l, ok := x.([]any); ok {
			for _, t := range l {
				if s, ok := t.(string); ok {
					set[s] = true
				}
			}
		}
	}
	out := make([]any, 0, len(set))
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k)
	}
	return out
}

// Trace is a trace as Langfuse shows it after merging.
type Trace struct {
	ID          string         `json:"id"`
	Timestamp   time.Time      `json:"timestamp"`
	Name        string         `json:"name"`
	UserID      string         `json:"userId"`
	SessionID   string         `json:"sessionId"`
	Input       any            `json:"input"`
	Output      any            `json:"output"`
	Metadata    map[string]any `json:"metadata"`
	Tags        []string       `json:"tags"`
	Environment string         `json:"environment"`
	Release     string         `json:"release"`
	Version     string         `json:"version"`
	Public      bool           `json:"public"`
}

// Observation is an observation as Langfuse shows it after merging.
type Observation struct {
	ID                  string             `json:"id"`
	Type                string             `json:"type"` // GENERATION, SPAN, EVENT, ...
	TraceID             string             `json:"traceId"`
	ParentObservationID string             `json:"parentObservationId"`
	Name                string             `json:"name"`
	StartTime           time.Time          `json:"startTime"`
	EndTime             *time.Time         `json:"endTime"`
	CompletionStartTime *time.Time         `json:"completionStartTime"`
	Model               string             `json:"model"`
	ModelParameters     map[string]any     `json:"modelParameters"`
	Input               any                `json:"input"`
	Output              any                `json:"output"`
	Metadata            map[string]any     `json:"metadata"`
	UsageDetails        map[string]int64   `json:"usageDetails"`
	CostDetails         map[string]float64 `json:"costDetails"`
	Level               string             `json:"level"`
	StatusMessage       string             `json:"statusMessage"`
	Environment         string             `json:"environment"`
}

func convert(m map[string]any, into any) {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	if err := json.Unmarshal(b, into); err != nil {
		panic(fmt.Sprintf("langfusetest: stored body does not decode: %v", err))
	}
}

// Traces returns every stored trace, merged, by id.
func (s *Server) Traces() map[string]Trace {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Trace, len(s.stored["trace"]))
	for id, evs := range s.stored["trace"] {
		if t, ok := s.traceCache[id]; ok {
			out[id] = t
			continue
		}
		m := merged(evs, "id", "timestamp", "environment")
		var t Trace
		convert(m, &t)
		if t.Environment == "" {
			t.Environment = "default"
		}
		if t.Timestamp.IsZero() {
			// Langfuse uses the envelope timestamp when the body has none.
			t.Timestamp = firstTS(evs)
		}
		out[id] = t
		s.traceCache[id] = t
	}
	return out
}

// Observations returns every stored observation, merged, by id.
func (s *Server) Observations() map[string]Observation {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Observation, len(s.stored["observation"]))
	for id, evs := range s.stored["observation"] {
		if o, ok := s.obsCache[id]; ok {
			out[id] = o
			continue
		}
		m := merged(evs, "id", "traceId", "startTime", "environment")
		var o Observation
		convert(m, &o)
		if o.Environment == "" {
			o.Environment = "default"
		}
		o.Type = observationType(evs)
		out[id] = o
		s.obsCache[id] = o
	}
	return out
}

func firstTS(evs map[string]storedEvent) time.Time {
	var t time.Time
	for _, e := range evs {
		if t.IsZero() || e.ts.Before(t) {
			t = e.ts
		}
	}
	return t
}

func observationType(evs map[string]storedEvent) string {
	for _, e := range evs {
		typ, _, _ := strings.Cut(e.typ, "-")
		return strings.ToUpper(typ)
	}
	return ""
}
