package proxy

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/zstd"

	"github.com/callpipe/callpipe/schema"
)

// call is the capture state of one proxied call. Apart from the request-body
// byte count (read by the transport's goroutine) it is used only by the
// goroutine serving the call.
type call struct {
	p       *Proxy
	id      string
	kind    string
	start   time.Time
	traceID string
	session string
	apiKey  string // until done, which keeps only its hash and prefix
	keyHash string
	keyPref string
	attrs   callerAttrs

	// request
	reqBody      []byte // captured prefix, at most CaptureLimit bytes
	reqType      string // media type
	reqEncoding  string
	reqTruncated bool
	reqBytes     atomic.Int64
	reqCType     string                     // the Content-Type header (multipart boundary)
	parsed       bool                       // parseRequest ran
	reqFields    map[string]json.RawMessage // top-level JSON fields, when parsed
	reqComplete  bool                       // reqBody is one whole JSON object
	model, user  string
	reqStream    bool
	// upstreamBody is the whole body sent upstream when it was read whole
	// (the client's, or with usage injected): upstreamTransport hands it to
	// net/http as an in-memory body (inMemoryBody)
	upstreamBody []byte

	injected           bool
	origBody           []byte // the client's body, when injected
	origLength         int64
	origAcceptEncoding []string

	// response
	status     int
	headerAt   time.Time
	firstToken time.Time
	endAt      time.Time
	lastRead   time.Time
	respType   string
	respEnc    string
	sse        bool
	filtering  bool
	keepBody   bool
	body       bytes.Buffer // captured response prefix (raw, possibly encoded)
	respBytes  int64
	respCut    bool
	scan       *sseScanner
	asm        *streamAssembler
	upErr      error // reading the upstream body failed
	proxyErr   error // the upstream could not be reached
	proxyBody  []byte
	clientErr  error
	outBuf     []byte

	// noted by done for event
	clientGone bool
	endpoint   string
}

func newCall(p *Proxy, id, kind string, r *http.Request, attrs callerAttrs) *call {
	c := &call{p: p, id: id, kind: kind, start: time.Now(), attrs: attrs}
	c.traceID = attrs.traceID
	c.session = attrs.session
	c.apiKey = apiKey(r.Header)
	return c
}

// apiKey is the caller's key from "Authorization: Bearer" or "x-api-key".
func apiKey(h http.Header) string {
	if a := strings.TrimSpace(h.Get("Authorization")); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		if k := strings.TrimSpace(a[7:]); k != "" {
			return k
		}
	}
	return strings.TrimSpace(h.Get("X-Api-Key"))
}

// captureRequest reads up to CaptureLimit bytes of the body, puts back a body
// that yields every byte unchanged, parses what it read and, if asked to,
// rewrites the body to request usage.
func (c *call) captureRequest(r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	limit := c.p.opts.CaptureLimit
	orig := r.Body
	buf, err := io.ReadAll(io.LimitReader(orig, int64(limit)+1))
	c.reqBytes.Store(int64(len(buf)))
	switch {
	case err != nil: // the upstream request fails like the client's did
		r.Body = &readCloser{Reader: io.MultiReader(bytes.NewReader(buf), errReader{err}), c: orig}
	case len(buf) > limit: // the rest is forwarded as it comes, not captured
		c.reqTruncated = true
		r.Body = &readCloser{Reader: io.MultiReader(bytes.NewReader(buf), &countingReader{r: orig, n: &c.reqBytes}), c: orig}
	default:
		c.upstreamBody = buf
		r.Body = inMemoryBody(buf)
	}
	c.reqBody = buf[:min(len(buf), limit)]

	c.reqCType = r.Header.Get("Content-Type")
	c.reqType, _, _ = mime.ParseMediaType(c.reqCType)
	c.reqEncoding = strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
	// Only a streamed chat or completion request may need its body
	// rewritten before it goes upstream; any other body is parsed after the
	// answer, by the emitter (parseRequest), off the client's path.
	if err != nil || !c.p.opts.AskUsage || c.p.noInject.Load() || (c.kind != kindChat && c.kind != kindCompletions) {
		return
	}
	c.parseRequest()
	if !c.reqComplete || !c.reqStream || includesUsage(c.reqFields["stream_options"]) {
		return
	}
	body, ok := withIncludeUsage(c.reqBody)
	if !ok {
		return
	}
	c.injected = true
	c.origBody, c.origLength = c.reqBody, r.ContentLength
	c.upstreamBody = body
	r.Body = inMemoryBody(body)
	if r.ContentLength >= 0 {
		r.ContentLength = int64(len(body))
	}
	// An encoded stream could not be filtered byte for byte.
	if v, ok := r.Header["Accept-Encoding"]; ok {
		c.origAcceptEncoding = v
		r.Header.Del("Accept-Encoding")
	}
}

// parseRequest reads the model, user, stream flag and top-level fields of
// the captured request body (once).
func (c *call) parseRequest() {
	if c.parsed {
		return
	}
	c.parsed = true
	if c.reqEncoding != "" && c.reqEncoding != "identity" {
		return // not parsed: we do not decode request bodies
	}
	if strings.HasPrefix(c.reqType, "multipart/") {
		c.model, c.user = multipartFields(c.reqCType, c.reqBody)
		return
	}
	fields, complete := topLevel(c.reqBody)
	if fields == nil {
		return
	}
	c.reqFields, c.reqComplete = fields, complete && !c.reqTruncated
	c.model = jsonString(fields["model"])
	c.user = jsonString(fields["user"])
	c.reqStream = string(bytes.TrimSpace(fields["stream"])) == "true"
}

// inMemoryBody is a request body read whole. net/http's transport writes
// a body it knows is in memory with the request's headers, in one write
// to the upstream; any other body (such as the one ReverseProxy wraps
// every outgoing body in) has its headers flushed on their own first, a
// second write and wake-up of the upstream per call. The server closes
// the client's body, which is drained already.
func inMemoryBody(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

type readCloser struct {
	io.Reader
	c io.Closer
}

func (r *readCloser) Close() error { return r.c.Close() }

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n.Add(int64(n))
	return n, err
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// topLevel returns the members of a JSON object, in as far as b holds them
// (a truncated capture yields the members before the cut), and whether b is
// exactly one complete object. It returns nil when b does not start a JSON
// object.
func topLevel(b []byte) (fields map[string]json.RawMessage, complete bool) {
	if fields, ok := bindTopLevel(b); ok {
		return fields, true
	}
	if json.Unmarshal(b, &fields) == nil && fields != nil {
		return fields, true
	}
	fields = nil
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, false
	}
	fields = map[string]json.RawMessage{}
	for dec.More() {
		key, v, err := member(dec)
		if err != nil {
			return fields, false
		}
		fields[key] = v // the last of duplicate keys wins, as in Python's json
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return fields, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return fields, false
	}
	return fields, true
}

// bindTopLevel is topLevel of a complete, plain object (schema.Binder: no
// key with escapes, every value checked): the keys and values point into b
// instead of being copied, which for an embeddings answer is most of its
// bytes. ok is false for anything else, which encoding/json then reads.
// b must not change while fields is in use (masks write new buffers).
func bindTopLevel(b []byte) (fields map[string]json.RawMessage, ok bool) {
	d := schema.NewBinder(b)
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	if i == len(b) || b[i] != '{' {
		return nil, false
	}
	end := d.RawMap(i, &fields)
	if d.Failed() || !d.AtEnd(end) || fields == nil {
		return nil, false
	}
	return fields, true
}

// member reads the next member of the object dec is in: its key and the
// bytes of its value.
func member(dec *json.Decoder) (key string, v json.RawMessage, err error) {
	t, err := dec.Token()
	if err != nil {
		return "", nil, err
	}
	key, _ = t.(string)
	err = dec.Decode(&v)
	return key, v, err
}

func jsonString(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

func includesUsage(raw json.RawMessage) bool {
	var so struct {
		IncludeUsage bool `json:"include_usage"`
	}
	return json.Unmarshal(raw, &so) == nil && so.IncludeUsage
}

// withIncludeUsage re-emits the object body with stream_options.include_usage
// set: members keep their order and value bytes; stream_options is merged
// (or added last).
func withIncludeUsage(body []byte) ([]byte, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, false
	}
	var out bytes.Buffer
	out.Grow(len(body) + 40)
	out.WriteByte('{')
	found := false
	for n := 0; dec.More(); n++ {
		key, v, err := member(dec)
		if err != nil {
			return nil, false
		}
		if n > 0 {
			out.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		out.Write(k)
		out.WriteByte(':')
		if key != "stream_options" {
			out.Write(v)
			continue
		}
		found = true
		so := map[string]json.RawMessage{}
		if json.Unmarshal(v, &so) != nil || so == nil {
			so = map[string]json.RawMessage{}
		}
		so["include_usage"] = json.RawMessage("true")
		merged, err := json.Marshal(so)
		if err != nil {
			return nil, false
		}
		out.Write(merged)
	}
	if !found {
		if out.Len() > 1 {
			out.WriteByte(',')
		}
		out.WriteString(`"stream_options":{"include_usage":true}`)
	}
	out.WriteByte('}')
	return out.Bytes(), true
}

// multipartFields finds the model and user form fields of a multipart body prefix.
func multipartFields(contentType string, b []byte) (model, user string) {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil || params["boundary"] == "" {
		return "", ""
	}
	mr := multipart.NewReader(bytes.NewReader(b), params["boundary"])
	for {
		part, err := mr.NextPart()
		if err != nil {
			return model, user
		}
		if part.FileName() == "" {
			v, _ := io.ReadAll(io.LimitReader(part, 1024))
			switch part.FormName() {
			case "model":
				model = string(v)
			case "user":
				user = string(v)
			}
		}
		part.Close()
	}
}

// multipartSummary is the captured form of a multipart request: its fields,
// and each file's name, type and size (as far as captured).
func multipartSummary(contentType string, b []byte) json.RawMessage {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil || params["boundary"] == "" {
		return nil
	}
	type file struct {
		Field       string `json:"field"`
		Filename    string `json:"filename"`
		ContentType string `json:"content_type,omitempty"`
		Bytes       int64  `json:"bytes"`
	}
	sum := struct {
		Form  map[string]string `json:"form"`
		Files []file            `json:"files,omitempty"`
	}{Form: map[string]string{}}
	mr := multipart.NewReader(bytes.NewReader(b), params["boundary"])
	for {
		part, err := mr.NextPart()
		if err != nil {
			break
		}
		if part.FileName() != "" {
			n, _ := io.Copy(io.Discard, part)
			sum.Files = append(sum.Files, file{part.FormName(), part.FileName(), part.Header.Get("Content-Type"), n})
		} else {
			v, _ := io.ReadAll(io.LimitReader(part, 64<<10))
			sum.Form[part.FormName()] = string(v)
		}
		part.Close()
	}
	out, err := json.Marshal(sum)
	if err != nil {
		return nil
	}
	return out
}

// onResponse runs when the upstream's headers arrive.
func (c *call) onResponse(resp *http.Response) {
	c.headerAt = time.Now()
	c.status = resp.StatusCode
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return
	}
	c.respType, _, _ = mime.ParseMediaType(resp.Header.Get("Content-Type"))
	c.respEnc = strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding")))
	if c.respEnc == "identity" {
		c.respEnc = ""
	}
	c.sse = c.respType == "text/event-stream"
	limit := c.p.opts.CaptureLimit
	switch {
	case c.sse && c.respEnc == "":
		c.asm = &streamAssembler{limit: limit, chat: c.kind == kindChat}
		c.filtering = c.injected
		c.scan = &sseScanner{filter: c.filtering, lineMax: limit, holdMax: 64 << 10, onEvent: c.onEvent}
		if c.filtering && resp.ContentLength >= 0 {
			resp.ContentLength = -1
			resp.Header.Del("Content-Length")
		}
	case c.sse:
		c.keepBody = true // assembled from the decoded copy at the end
		if c.injected {
			c.p.log.Warn("proxy: encoded event stream; the requested usage chunk reaches the client",
				"encoding", c.respEnc, "event_id", c.id)
		}
	default:
		c.keepBody = c.respEnc != "" || textual(c.respType)
	}
	resp.Body = &bodyTap{rc: resp.Body, c: c}
}

func textual(mt string) bool {
	return mt == "" || strings.HasPrefix(mt, "text/") || mt == "application/json" ||
		strings.HasSuffix(mt, "+json") || mt == "application/x-ndjson" || mt == "application/xml"
}

// onEvent receives each SSE event of the response.
func (c *call) onEvent(data []byte, truncated bool) bool {
	content, usageOnly := c.asm.add(data, truncated)
	if content && c.firstToken.IsZero() {
		c.firstToken = c.lastRead
	}
	return c.filtering && usageOnly
}

// bodyTap sits between the upstream body and ReverseProxy's copy loop.
type bodyTap struct {
	rc      io.ReadCloser
	c       *call
	pending []byte
	err     error
}

func (b *bodyTap) Read(p []byte) (int, error) {
	c := b.c
	for {
		if len(b.pending) > 0 {
			n := copy(p, b.pending)
			b.pending = b.pending[n:]
			return n, nil
		}
		if b.err != nil {
			return 0, b.err
		}
		n, err := b.rc.Read(p)
		now := time.Now()
		if n > 0 {
			c.lastRead = now
			c.respBytes += int64(n)
			c.keep(p[:n])
		}
		if err != nil {
			c.endAt = now
			if err != io.EOF {
				c.upErr = err
			}
		}
		if c.scan == nil {
			return n, err
		}
		if !c.filtering {
			c.scan.feed(p[:n], nil)
			if err != nil {
				c.scan.finish(nil)
			}
			return n, err
		}
		c.outBuf = c.scan.feed(p[:n], c.outBuf[:0])
		if err != nil {
			c.outBuf = c.scan.finish(c.outBuf)
			b.err = err
		}
		b.pending = c.outBuf
	}
}

func (b *bodyTap) Close() error { return b.rc.Close() }

// keep adds response bytes to the captured copy, up to the capture limit.
func (c *call) keep(p []byte) {
	if !c.keepBody {
		return
	}
	room := c.p.opts.CaptureLimit - c.body.Len()
	if len(p) > room {
		c.respCut = true
		p = p[:max(room, 0)]
	}
	c.body.Write(p)
}

// done runs in the handler once the answer is written (deferred, so also
// when ReverseProxy aborts it): it notes what the event needs from the
// request, keeps only the API key's hash, and hands the call to the
// emitter, which builds its event (event) off the client's path.
func (c *call) done(r *http.Request) {
	if c.endAt.IsZero() {
		c.endAt = time.Now()
	}
	c.clientGone = r.Context().Err() != nil
	c.endpoint = r.URL.EscapedPath()
	if c.apiKey != "" {
		c.keyHash, c.keyPref = schema.HashAPIKey(c.apiKey), schema.APIKeyPrefix(c.apiKey)
		c.apiKey = ""
	}
	c.p.emitCall(c)
}

// event builds the call's event, once the call is done.
func (c *call) event() *schema.Event {
	c.parseRequest()
	// Times derive from the monotonic clock, so their order is right even if
	// the wall clock steps during the call.
	start := c.start.UTC()
	at := func(t time.Time) time.Time { return start.Add(max(t.Sub(c.start), 0)) }
	end := at(c.endAt)
	ev := &schema.Event{
		ID:               c.id,
		TraceID:          c.traceID,
		SessionID:        c.session,
		StartTime:        start,
		EndTime:          &end,
		Endpoint:         c.endpoint,
		Model:            c.model,
		User:             c.user,
		APIKeyHash:       c.keyHash,
		APIKeyPrefix:     c.keyPref,
		Stream:           c.sse || c.reqStream,
		Status:           c.status,
		Source:           c.attrs.source,
		BatchID:          c.attrs.batchID,
		Tags:             c.attrs.tags,
		RequestTruncated: c.reqTruncated,
	}
	applyBodyAttrs(ev, c.reqFields)
	if ev.TraceID == "" {
		ev.TraceID = c.id
	}
	ev.Request = c.requestCapture()

	meta := map[string]any{}
	var respFields map[string]json.RawMessage
	switch {
	case c.proxyBody != nil:
		ev.Response = c.proxyBody
	case c.asm != nil:
		ev.Response = c.asm.result()
	case c.keepBody:
		ev.Response, respFields = c.responseCapture(meta)
	case c.respBytes > 0:
		ev.Response = summary(c.respType, c.respEnc, c.respBytes)
	}
	if c.asm != nil {
		if c.asm.truncated {
			meta["response_truncated"] = true
		}
		ev.Usage = usageFrom(c.asm.usage)
		if ev.Model == "" {
			ev.Model = c.asm.model
		}
	} else if respFields != nil {
		ev.Usage = usageFrom(respFields["usage"])
		if ev.Usage == nil {
			var m struct {
				Tokens json.RawMessage `json:"tokens"`
			}
			if unmarshalLoose(respFields["meta"], &m) {
				ev.Usage = usageFrom(m.Tokens) // rerank: meta.tokens
			}
		}
		if ev.Model == "" {
			ev.Model = jsonString(respFields["model"])
		}
	}

	// The instance is the model UID the upstream answered with (Xinference
	// names the serving model by UID; it does not say which replica), unless
	// configured; the upstream's address stays in metadata (proxy.upstream).
	ev.Instance = c.p.instance
	if ev.Instance == "" {
		ev.Instance = answeredModel(c.asm, respFields)
	}
	if ev.Instance == "" {
		ev.Instance = c.p.upstream
	}
	meta["upstream"] = c.p.upstream

	// First token for streams only: a whole answer has no first token, and
	// its first byte would make TTFT percentiles mean latency.
	var first time.Time
	if c.sse {
		first = c.firstToken
	}
	if !c.headerAt.IsZero() {
		meta["first_byte_time"] = at(c.headerAt)
	}
	if !first.IsZero() {
		t := at(first)
		if t.After(end) {
			t = end
		}
		ev.FirstTokenTime = &t
	}

	switch {
	case c.clientGone || c.clientErr != nil:
		ev.Error = "client disconnected"
		if ev.Status == 0 {
			ev.Status = 499 // the client left before any answer
		}
	case c.proxyErr != nil:
		ev.Status = http.StatusBadGateway
		ev.Error = "upstream unreachable: " + c.proxyErr.Error()
	case c.upErr != nil:
		ev.Error = "upstream response broken: " + c.upErr.Error()
	case c.asm != nil && c.asm.errMsg != "":
		ev.Error = c.asm.errMsg
	case ev.Status >= 400:
		ev.Error = errorText(ev.Status, respFields, c.body.Bytes())
	}
	if c.injected {
		meta["usage_requested"] = true
	}
	meta["request_bytes"] = c.reqBytes.Load()
	meta["response_bytes"] = c.respBytes
	if b, err := json.Marshal(meta); err == nil {
		if ev.Metadata == nil {
			ev.Metadata = map[string]json.RawMessage{}
		}
		ev.Metadata["proxy"] = b
	}
	return ev
}

// requestCapture is the event's request: the JSON body as sent, or a JSON
// string of a truncated or non-JSON text body, or a summary.
func (c *call) requestCapture() json.RawMessage {
	b := c.reqBody
	if len(b) == 0 {
		return nil
	}
	switch {
	case c.reqEncoding != "" && c.reqEncoding != "identity":
		return summary(c.reqType, c.reqEncoding, c.reqBytes.Load())
	case strings.HasPrefix(c.reqType, "multipart/"):
		if s := multipartSummary(c.reqCType, b); s != nil {
			return s
		}
	case !c.reqTruncated && utf8.Valid(b) && (c.reqComplete || json.Valid(b)):
		return b
	}
	return textOrSummary(c.reqType, b, c.reqBytes.Load())
}

// responseCapture decodes the captured response copy; it returns the event's
// response and, for a JSON object, its members.
func (c *call) responseCapture(meta map[string]any) (json.RawMessage, map[string]json.RawMessage) {
	b := c.body.Bytes()
	cut := c.respCut
	if c.respEnc != "" {
		d, dcut, ok := decode(c.respEnc, b, c.p.opts.CaptureLimit)
		if !ok {
			return summary(c.respType, c.respEnc, c.respBytes), nil
		}
		b, cut = d, cut || dcut
	}
	if cut {
		meta["response_truncated"] = true
	}
	if c.sse { // encoded stream: assemble it now
		c.asm = &streamAssembler{limit: c.p.opts.CaptureLimit, chat: c.kind == kindChat}
		sc := &sseScanner{lineMax: c.p.opts.CaptureLimit, onEvent: func(d []byte, t bool) bool { c.asm.add(d, t); return false }}
		sc.feed(b, nil)
		sc.finish(nil)
		return c.asm.result(), nil
	}
	if !cut && utf8.Valid(b) {
		if fields, complete := topLevel(b); complete {
			return b, fields
		}
		if json.Valid(b) {
			return b, nil
		}
	}
	return textOrSummary(c.respType, b, c.respBytes), nil
}

// textOrSummary captures a text body as a JSON string (cut bodies may end
// inside a UTF-8 sequence), anything else as its type and size.
func textOrSummary(mt string, b []byte, total int64) json.RawMessage {
	if textual(mt) {
		t := b
		for i := 0; i < 3 && len(t) > 0 && !utf8.Valid(t); i++ {
			t = t[:len(t)-1]
		}
		if utf8.Valid(t) {
			if s, err := json.Marshal(string(t)); err == nil {
				return s
			}
		}
	}
	return summary(mt, "", total)
}

func summary(mt, enc string, n int64) json.RawMessage {
	s, _ := json.Marshal(struct {
		ContentType     string `json:"content_type,omitempty"`
		ContentEncoding string `json:"content_encoding,omitempty"`
		Bytes           int64  `json:"bytes"`
	}{mt, enc, n})
	return s
}

// decode undoes a Content-Encoding, keeping at most limit bytes.
func decode(enc string, b []byte, limit int) (out []byte, cut, ok bool) {
	var r io.Reader
	var err error
	switch enc {
	case "gzip", "x-gzip":
		r, err = gzip.NewReader(bytes.NewReader(b))
	case "deflate":
		r, err = zlib.NewReader(bytes.NewReader(b))
	case "zstd":
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1))
		if err == nil {
			defer d.Close()
			r = d
		}
	default:
		return nil, false, false
	}
	if err != nil {
		return nil, false, false
	}
	out, err = io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if len(out) > limit {
		return out[:limit], true, true
	}
	// A captured prefix ends mid-stream: keep what decoded.
	return out, err != nil && !errors.Is(err, io.EOF), len(out) > 0 || err == nil
}

// errorText describes an upstream error answer.
func errorText(status int, fields map[string]json.RawMessage, body []byte) string {
	for _, k := range []string{"detail", "error", "message"} {
		if v, ok := fields[k]; ok && !isNull(v) {
			if m := messageOf(v); m != "" {
				return m
			}
		}
	}
	if t := strings.TrimSpace(string(body)); t != "" && utf8.ValidString(t) {
		return clip(t, 1024)
	}
	return http.StatusText(status)
}

// usageFrom reads an OpenAI-style usage object (prompt/completion/total
// tokens, or input/output tokens as rerank's meta.tokens has them). It
// returns nil when nothing is reported or any count is negative or not an
// integer.
func usageFrom(raw json.RawMessage) *schema.Usage {
	if isNull(raw) {
		return nil
	}
	var u schema.ReportedUsage
	if !unmarshalLoose(raw, &u) {
		return nil
	}
	var out schema.Usage
	for _, f := range []struct {
		in  *float64
		out **int64
	}{{u.Prompt(), &out.PromptTokens}, {u.Completion(), &out.CompletionTokens}, {u.TotalTokens, &out.TotalTokens}} {
		if f.in == nil {
			continue
		}
		n, ok := schema.TokenCount(f.in)
		if !ok {
			return nil
		}
		*f.out = &n
	}
	if out.TotalTokens == nil && out.PromptTokens != nil && out.CompletionTokens != nil {
		t := *out.PromptTokens + *out.CompletionTokens
		out.TotalTokens = &t
	}
	if out.PromptTokens == nil && out.CompletionTokens == nil && out.TotalTokens == nil {
		return nil
	}
	return &out
}

// answeredModel is the `model` of the upstream's answer: the assembled
// stream's, or the whole answer's top-level field.
func answeredModel(asm *streamAssembler, fields map[string]json.RawMessage) string {
	if asm != nil {
		return asm.model
	}
	return jsonString(fields["model"])
}
