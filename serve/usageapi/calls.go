package usageapi

import (
	"net/http"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/callpipe/callpipe/store/callsdb"
)

// maxTraceCalls caps the calls of one trace answer.
const maxTraceCalls = 2000

// CallsResponse is the body of GET /api/v1/calls.
type CallsResponse struct {
	From       time.Time             `json:"from"`
	To         time.Time             `json:"to"`
	Calls      []callsdb.CallSummary `json:"calls"`
	NextCursor string                `json:"next_cursor,omitempty"`
}

func (s *Server) handleCalls(w http.ResponseWriter, r *http.Request) {
	q, err := newQuery(r.URL.Query(), "from", "to", "user", "model", "source", "batch_id", "status", "limit", "cursor", "tz")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var spec callsdb.CallListSpec
	loc, from, to, err := q.zonedRange(s.now())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	spec.From, spec.To = from, to
	for _, p := range []struct {
		name string
		dst  *string
	}{{"user", &spec.User}, {"model", &spec.Model}, {"batch_id", &spec.BatchID}} {
		if *p.dst, err = q.filter(p.name); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if spec.Source, err = q.source(); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := batchWithSource(spec.BatchID, spec.Source); err != nil {
		s.fail(w, r, err)
		return
	}
	if spec.Status, err = q.status(); err != nil {
		s.fail(w, r, err)
		return
	}
	if spec.Limit, err = q.limit(); err != nil {
		s.fail(w, r, err)
		return
	}
	if spec.After, err = q.cursor(); err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.queryContext(r)
	defer cancel()
	calls, next, err := s.store.Calls(ctx, spec)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, CallsResponse{From: spec.From.In(loc), To: spec.To.In(loc), Calls: calls, NextCursor: encodeCursor(next)})
}

// CallResponse is the body of GET /api/v1/calls/{id}: the full normalized
// call, whether its stored text was cut, and its Langfuse trace link.
type CallResponse struct {
	callsdb.StoredCall
	LangfuseURL string `json:"langfuse_url,omitempty"`
}

func (s *Server) handleCall(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := checkID("id", id); err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.queryContext(r)
	defer cancel()
	c, err := s.store.Call(ctx, id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, CallResponse{StoredCall: *c, LangfuseURL: s.links.Load().traceURL(&c.Call)})
}

func checkID(param, id string) error {
	if id == "" || len(id) > maxFilterBytes {
		return bad(param, "must be 1..%d bytes", maxFilterBytes)
	}
	if !utf8.ValidString(id) {
		return bad(param, "not valid UTF-8")
	}
	return nil
}

// TraceNode is one node of a trace tree: a session (calls sharing
// session_id), a trace (calls sharing trace_id) or a call. Offsets are
// milliseconds from the start of the whole answer, for the timeline.
type TraceNode struct {
	Type         string      `json:"type"` // session, trace or call
	ID           string      `json:"id"`
	Name         string      `json:"name"`
	StartTime    time.Time   `json:"start_time"`
	EndTime      time.Time   `json:"end_time"`
	OffsetMS     int64       `json:"offset_ms"`
	DurationMS   int64       `json:"duration_ms"`
	Calls        int         `json:"calls"`
	Errors       int         `json:"errors"`
	InputTokens  int64       `json:"input_tokens"`
	OutputTokens int64       `json:"output_tokens"`
	TotalTokens  int64       `json:"total_tokens"`
	CostUSD      float64     `json:"cost_usd"`
	Model        string      `json:"model,omitempty"`
	Status       int         `json:"status,omitempty"`
	LangfuseURL  string      `json:"langfuse_url,omitempty"`
	Children     []TraceNode `json:"children,omitempty"`
}

// TraceResponse is the body of GET /api/v1/traces/{trace_id}: the tree
// (session → traces → calls, or trace → calls) and the calls in start order
// (the timeline rows, with depth 1 or 2).
type TraceResponse struct {
	ID        string      `json:"id"`
	MatchedBy string      `json:"matched_by"` // trace_id or session_id
	Truncated bool        `json:"truncated"`  // more than maxTraceCalls calls: only the first ones
	Root      TraceNode   `json:"root"`
	Timeline  []TraceNode `json:"timeline"`
}

func (s *Server) handleTrace(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("trace_id")
	if err := checkID("trace_id", id); err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.queryContext(r)
	defer cancel()
	calls, err := s.store.Trace(ctx, id, maxTraceCalls+1)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(calls) == 0 {
		s.writeJSON(w, http.StatusNotFound, map[string]string{"error": "no call has trace_id or session_id " + quoteID(id), "param": "trace_id"})
		return
	}
	truncated := len(calls) > maxTraceCalls
	if truncated {
		calls = calls[:maxTraceCalls]
	}
	s.writeJSON(w, http.StatusOK, buildTrace(id, calls, truncated, *s.links.Load()))
}

func quoteID(id string) string { return "\"" + id + "\"" }

// buildTrace arranges calls (earliest first) as a tree: when id is their
// trace_id, the trace holds the calls; when some calls matched by session_id,
// the session holds one trace per trace_id, each holding its calls.
func buildTrace(id string, calls []callsdb.StoredCall, truncated bool, links langfuseLinks) TraceResponse {
	bySession := false
	for i := range calls {
		if calls[i].TraceID != id {
			bySession = true
		}
	}
	t0 := calls[0].StartTime
	for i := range calls {
		if calls[i].StartTime.Before(t0) {
			t0 = calls[i].StartTime
		}
	}
	leaf := func(c *callsdb.StoredCall) TraceNode {
		n := TraceNode{Type: "call", ID: c.ID, Name: c.Kind + " " + c.Model, Model: c.Model, Status: c.Status,
			StartTime: c.StartTime, EndTime: c.EndTime, Calls: 1,
			InputTokens: c.InputTokens, OutputTokens: c.OutputTokens, TotalTokens: c.TotalTokens}
		if c.Status >= 400 || c.Error != "" {
			n.Errors = 1
		}
		if c.CostUSD != nil {
			n.CostUSD = *c.CostUSD
		}
		return n
	}
	var timeline []TraceNode
	group := func(typ, gid string, members []*callsdb.StoredCall) TraceNode {
		n := TraceNode{Type: typ, ID: gid, Name: typ + " " + gid}
		for _, c := range members {
			l := leaf(c)
			timeline = append(timeline, l)
			n.Children = append(n.Children, l)
		}
		sumUp(&n)
		if typ == "trace" && len(members) > 0 {
			n.LangfuseURL = links.traceURL(&members[0].Call)
		}
		return n
	}
	var root TraceNode
	if !bySession {
		members := make([]*callsdb.StoredCall, len(calls))
		for i := range calls {
			members[i] = &calls[i]
		}
		root = group("trace", id, members)
	} else {
		root = TraceNode{Type: "session", ID: id, Name: "session " + id}
		var order []string
		byTrace := map[string][]*callsdb.StoredCall{}
		for i := range calls {
			tid := calls[i].TraceID
			if tid == "" {
				tid = calls[i].ID // a call without trace_id is its own trace (as in Langfuse)
			}
			if _, ok := byTrace[tid]; !ok {
				order = append(order, tid)
			}
			byTrace[tid] = append(byTrace[tid], &calls[i])
		}
		for _, tid := range order {
			root.Children = append(root.Children, group("trace", tid, byTrace[tid]))
		}
		sumUp(&root)
	}
	setOffsets(&root, t0)
	for i := range timeline {
		setOffsets(&timeline[i], t0)
	}
	sort.SliceStable(timeline, func(i, j int) bool { return timeline[i].StartTime.Before(timeline[j].StartTime) })
	matched := "trace_id"
	if bySession {
		matched = "session_id"
	}
	return TraceResponse{ID: id, MatchedBy: matched, Truncated: truncated, Root: root, Timeline: timeline}
}

// sumUp sets a group node's span and totals from its children.
func sumUp(n *TraceNode) {
	for i, c := range n.Children {
		if i == 0 || c.StartTime.Before(n.StartTime) {
			n.StartTime = c.StartTime
		}
		if c.EndTime.After(n.EndTime) {
			n.EndTime = c.EndTime
		}
		n.Calls += c.Calls
		n.Errors += c.Errors
		n.InputTokens += c.InputTokens
		n.OutputTokens += c.OutputTokens
		n.TotalTokens += c.TotalTokens
		n.CostUSD += c.CostUSD
	}
}

func setOffsets(n *TraceNode, t0 time.Time) {
	n.OffsetMS = n.StartTime.Sub(t0).Milliseconds()
	n.DurationMS = max(n.EndTime.Sub(n.StartTime).Milliseconds(), 0)
	for i := range n.Children {
		setOffsets(&n.Children[i], t0)
	}
}

// batchWithSource refuses a batch_id filter that source=online makes
// match nothing: only batch calls have a batch id.
func batchWithSource(batchID, source string) error {
	if batchID != "" && source == "online" {
		return bad("batch_id", "only batch calls have a batch id; use source=batch or leave source out")
	}
	return nil
}

// BatchesResponse is the body of GET /api/v1/batches.
type BatchesResponse struct {
	From    time.Time              `json:"from"`
	To      time.Time              `json:"to"`
	Batches []callsdb.BatchSummary `json:"batches"`
}

// handleBatches lists the batch jobs with calls in the range: calls,
// errors, tokens, cost and the span of each, the latest-ending first.
func (s *Server) handleBatches(w http.ResponseWriter, r *http.Request) {
	q, err := newQuery(r.URL.Query(), "from", "to", "limit", "tz")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var spec callsdb.BatchSpec
	loc, from, to, err := q.zonedRange(s.now())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	spec.From, spec.To = from, to
	if spec.Limit, err = q.limit(); err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.queryContext(r)
	defer cancel()
	batches, err := s.store.Batches(ctx, spec)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for i := range batches {
		batches[i].FirstStart, batches[i].LastEnd = batches[i].FirstStart.In(loc), batches[i].LastEnd.In(loc)
	}
	s.writeJSON(w, http.StatusOK, BatchesResponse{From: spec.From.In(loc), To: spec.To.In(loc), Batches: batches})
}
