package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"unicode/utf8"
)

// sseScanner splits a Server-Sent Events byte stream into events as bytes
// arrive, whatever the chunking, with the line terminators of the SSE spec
// (CRLF, LF or CR). It keeps at most one line and one event's data.
//
// Without filtering it only observes: the caller forwards the bytes itself.
// With filtering, feed returns the bytes to forward: each event is held until
// its terminating blank line, then forwarded whole, or dropped if onEvent asks
// to. Bytes outside dropped events pass exactly as they came, so the output is
// the input minus the dropped events' bytes. An event that grows beyond
// holdMax is released at once and can no longer be dropped.
type sseScanner struct {
	filter  bool
	lineMax int // longest line kept for parsing; longer lines still pass through
	holdMax int
	// onEvent receives each event's data (data lines joined by "\n"); truncated
	// means it was longer than lineMax and was cut. Its result drops the event
	// when filtering.
	onEvent func(data []byte, truncated bool) (drop bool)

	line        []byte
	lineTooLong bool
	data        []byte
	hasData     bool
	dataTooLong bool

	held      []byte
	releasing bool

	crPending    bool // the last byte was a CR ending a line: a following LF belongs to it
	crEndedEvent bool // ... and that line ended an event
	crDropped    bool // ... which was dropped
}

// feed consumes p and, when filtering, appends the bytes to forward to out.
func (s *sseScanner) feed(p, out []byte) []byte {
	for len(p) > 0 {
		if s.crPending {
			s.crPending = false
			if p[0] == '\n' {
				if s.crEndedEvent {
					if s.filter && !s.crDropped {
						out = append(out, '\n')
					}
				} else {
					out = s.pass(out, p[:1])
				}
				p = p[1:]
				continue
			}
		}
		i := bytes.IndexAny(p, "\r\n")
		if i < 0 {
			s.addLine(p)
			return s.pass(out, p)
		}
		s.addLine(p[:i])
		seg := p[:i+1]
		s.crPending = p[i] == '\r'
		p = p[i+1:]
		if len(s.line) == 0 && !s.lineTooLong {
			out = s.dispatch(out, seg)
		} else {
			s.processLine()
			out = s.pass(out, seg)
			s.crEndedEvent = false
		}
		s.line = s.line[:0]
		s.lineTooLong = false
	}
	return out
}

// finish handles the end of the stream: an unterminated event is offered to
// onEvent for capture but always forwarded, with any held bytes.
func (s *sseScanner) finish(out []byte) []byte {
	if len(s.line) > 0 || s.lineTooLong {
		s.processLine()
	}
	if s.hasData {
		s.onEvent(s.data, s.dataTooLong)
	}
	if s.filter {
		out = append(out, s.held...)
	}
	s.resetEvent()
	s.line, s.lineTooLong, s.crPending = s.line[:0], false, false
	return out
}

func (s *sseScanner) dispatch(out, blank []byte) []byte {
	drop := false
	if s.hasData {
		drop = s.onEvent(s.data, s.dataTooLong)
	}
	if s.filter {
		switch {
		case s.releasing:
			drop = false
			out = append(out, blank...)
		case !drop:
			out = append(out, s.held...)
			out = append(out, blank...)
		}
	}
	s.crEndedEvent, s.crDropped = true, drop
	s.resetEvent()
	return out
}

func (s *sseScanner) resetEvent() {
	s.held = s.held[:0]
	s.releasing = false
	s.data = s.data[:0]
	s.hasData, s.dataTooLong = false, false
}

func (s *sseScanner) pass(out, b []byte) []byte {
	if !s.filter {
		return out
	}
	if s.releasing {
		return append(out, b...)
	}
	s.held = append(s.held, b...)
	if len(s.held) > s.holdMax {
		out = append(out, s.held...)
		s.held = s.held[:0]
		s.releasing = true
	}
	return out
}

func (s *sseScanner) addLine(b []byte) {
	if s.lineTooLong {
		return
	}
	if len(s.line)+len(b) > s.lineMax {
		s.line = append(s.line, b[:s.lineMax-len(s.line)]...)
		s.lineTooLong = true
		return
	}
	s.line = append(s.line, b...)
}

func (s *sseScanner) processLine() {
	line := s.line
	if len(line) > 0 && line[0] == ':' {
		return // comment, e.g. sse-starlette's ": ping"
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	if string(field) != "data" {
		return
	}
	if s.hasData && !s.dataTooLong {
		s.data = append(s.data, '\n')
	}
	s.hasData = true
	if s.lineTooLong || len(s.data)+len(value) > s.lineMax {
		s.dataTooLong = true
		return
	}
	if !s.dataTooLong {
		s.data = append(s.data, value...)
	}
}

// Bounds on what a stream assembly keeps, beyond the byte limit.
const (
	maxChoices   = 64
	maxToolCalls = 128
)

// streamAssembler rebuilds the non-streamed response from OpenAI-style stream
// chunks (chat.completion.chunk or text_completion): content, reasoning,
// tool calls, finish reasons and usage. Text beyond limit bytes is cut and the
// result marked truncated.
type streamAssembler struct {
	limit     int
	size      int
	truncated bool
	chat      bool // the endpoint is chat/completions

	events    int // data events
	badEvents int // data that is neither JSON nor [DONE]
	done      bool

	id, object, model, fingerprint string
	created                        int64
	choices                        []*choiceAcc
	usage                          json.RawMessage
	errMsg                         string
	errRaw                         json.RawMessage
	sawDelta, sawText              bool
}

type choiceAcc struct {
	index                    int
	role                     string
	content, reasoning, text strings.Builder
	hasContent, hasReasoning bool
	hasText                  bool
	toolCalls                []*toolCallAcc
	finishReason             *string
}

type toolCallAcc struct {
	index         int
	id, typ, name string
	args          strings.Builder
}

type chunkJSON struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint"`
	Choices           json.RawMessage `json:"choices"`
	Usage             json.RawMessage `json:"usage"`
	Error             json.RawMessage `json:"error"`
}

type choiceJSON struct {
	Index        int        `json:"index"`
	Delta        *deltaJSON `json:"delta"`
	Text         *string    `json:"text"`
	FinishReason *string    `json:"finish_reason"`
}

type deltaJSON struct {
	Role             *string         `json:"role"`
	Content          *string         `json:"content"`
	ReasoningContent *string         `json:"reasoning_content"`
	ToolCalls        []toolCallDelta `json:"tool_calls"`
}

type toolCallDelta struct {
	Index    *int   `json:"index"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

// unmarshalLoose decodes like json.Unmarshal but keeps what it could decode
// when some value has an unexpected type.
func unmarshalLoose(data []byte, v any) bool {
	err := json.Unmarshal(data, v)
	var te *json.UnmarshalTypeError
	return err == nil || errors.As(err, &te)
}

// add consumes one event's data. content reports that the chunk carries
// generated output (for first-token time); usageOnly that it is the usage
// chunk include_usage adds (empty choices, usage set).
func (a *streamAssembler) add(data []byte, truncated bool) (content, usageOnly bool) {
	a.events++
	if truncated {
		a.truncated = true
		return true, false
	}
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("[DONE]")) {
		a.done = true
		return false, false
	}
	var c chunkJSON
	if len(data) == 0 || data[0] != '{' || !unmarshalLoose(data, &c) {
		a.badEvents++
		return false, false
	}
	if a.id == "" {
		a.id = c.ID
	}
	if a.object == "" {
		a.object = c.Object
	}
	if a.model == "" {
		a.model = c.Model
	}
	if a.created == 0 {
		a.created = c.Created
	}
	if a.fingerprint == "" {
		a.fingerprint = c.SystemFingerprint
	}
	if !isNull(c.Usage) && bytes.HasPrefix(bytes.TrimSpace(c.Usage), []byte("{")) {
		a.usage = append(a.usage[:0], c.Usage...)
	}
	if !isNull(c.Error) {
		a.errRaw = append(a.errRaw[:0], c.Error...)
		a.errMsg = messageOf(c.Error)
	}
	var choices []json.RawMessage
	if !isNull(c.Choices) && !unmarshalLoose(c.Choices, &choices) {
		choices = nil
	}
	if !isNull(c.Choices) && len(choices) == 0 && !isNull(c.Usage) {
		usageOnly = true
	}
	for _, raw := range choices {
		var ch choiceJSON
		if !unmarshalLoose(raw, &ch) {
			continue
		}
		if a.addChoice(&ch) {
			content = true
		}
	}
	return content, usageOnly
}

func (a *streamAssembler) choice(index int) *choiceAcc {
	for _, c := range a.choices {
		if c.index == index {
			return c
		}
	}
	if len(a.choices) >= maxChoices {
		a.truncated = true
		return nil
	}
	c := &choiceAcc{index: index}
	a.choices = append(a.choices, c)
	return c
}

func (a *streamAssembler) addChoice(ch *choiceJSON) (content bool) {
	c := a.choice(ch.Index)
	if c == nil {
		return false
	}
	if ch.FinishReason != nil {
		fr := *ch.FinishReason
		c.finishReason = &fr
	}
	if ch.Text != nil {
		a.sawText = true
		c.hasText = true
		if *ch.Text != "" {
			content = true
			a.appendBounded(&c.text, *ch.Text)
		}
	}
	d := ch.Delta
	if d == nil {
		return content
	}
	a.sawDelta = true
	if d.Role != nil && *d.Role != "" && c.role == "" {
		c.role = *d.Role
	}
	if d.Content != nil {
		c.hasContent = true
		if *d.Content != "" {
			content = true
			a.appendBounded(&c.content, *d.Content)
		}
	}
	if d.ReasoningContent != nil && *d.ReasoningContent != "" {
		c.hasReasoning = true
		content = true
		a.appendBounded(&c.reasoning, *d.ReasoningContent)
	}
	for i := range d.ToolCalls {
		if a.addToolCall(c, &d.ToolCalls[i]) {
			content = true
		}
	}
	return content
}

// addToolCall merges a tool-call delta. Deltas merge by index, as OpenAI
// streams them; a delta whose id differs from the call at its index starts a
// new call (Xinference sends every call with index 0 and its own id).
func (a *streamAssembler) addToolCall(c *choiceAcc, d *toolCallDelta) bool {
	var tc *toolCallAcc
	for i := len(c.toolCalls) - 1; i >= 0 && tc == nil; i-- {
		cand := c.toolCalls[i]
		switch {
		case d.Index != nil && cand.index == *d.Index && (d.ID == "" || cand.id == "" || cand.id == d.ID):
			tc = cand
		case d.Index == nil && d.ID != "" && cand.id == d.ID:
			tc = cand
		case d.Index == nil && d.ID == "" && i == len(c.toolCalls)-1:
			tc = cand
		}
	}
	if tc == nil {
		if len(c.toolCalls) >= maxToolCalls {
			a.truncated = true
			return false
		}
		tc = &toolCallAcc{index: len(c.toolCalls)}
		if d.Index != nil {
			tc.index = *d.Index
		}
		c.toolCalls = append(c.toolCalls, tc)
	}
	if tc.id == "" {
		tc.id = d.ID
	}
	if tc.typ == "" {
		tc.typ = d.Type
	}
	if tc.name == "" {
		tc.name = d.Function.Name
	}
	args := d.Function.Arguments
	if !isNull(args) {
		var s string
		if json.Unmarshal(args, &s) == nil {
			a.appendBounded(&tc.args, s)
		} else {
			a.appendBounded(&tc.args, string(bytes.TrimSpace(args)))
		}
	}
	return true
}

func (a *streamAssembler) appendBounded(b *strings.Builder, s string) {
	room := a.limit - a.size
	if room <= 0 {
		if s != "" {
			a.truncated = true
		}
		return
	}
	if len(s) > room {
		a.truncated = true
		s = cutUTF8(s, room)
	}
	a.size += len(s)
	b.WriteString(s)
}

type outToolCall struct {
	ID       string `json:"id,omitempty"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type outMessage struct {
	Role             string        `json:"role"`
	Content          *string       `json:"content"`
	ReasoningContent *string       `json:"reasoning_content,omitempty"`
	ToolCalls        []outToolCall `json:"tool_calls,omitempty"`
}

type outChoice struct {
	Index        int         `json:"index"`
	Message      *outMessage `json:"message,omitempty"`
	Text         *string     `json:"text,omitempty"`
	FinishReason *string     `json:"finish_reason"`
}

type outResponse struct {
	ID                string          `json:"id,omitempty"`
	Object            string          `json:"object"`
	Created           int64           `json:"created,omitempty"`
	Model             string          `json:"model,omitempty"`
	SystemFingerprint string          `json:"system_fingerprint,omitempty"`
	Choices           []outChoice     `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
	Error             json.RawMessage `json:"error,omitempty"`
}

// result is the assembled response in the shape of the non-streamed one.
func (a *streamAssembler) result() json.RawMessage {
	chat := a.sawDelta || (!a.sawText && a.chat)
	out := outResponse{
		ID: a.id, Created: a.created, Model: a.model, SystemFingerprint: a.fingerprint,
		Choices: make([]outChoice, 0, len(a.choices)),
	}
	switch {
	case chat:
		out.Object = "chat.completion"
	case a.object != "":
		out.Object = a.object
	default:
		out.Object = "text_completion"
	}
	if json.Valid(a.usage) {
		out.Usage = a.usage
	}
	if json.Valid(a.errRaw) {
		out.Error = a.errRaw
	}
	for _, c := range a.choices {
		oc := outChoice{Index: c.index, FinishReason: c.finishReason}
		if chat {
			m := &outMessage{Role: c.role}
			if m.Role == "" {
				m.Role = "assistant"
			}
			if c.hasContent || c.content.Len() > 0 {
				s := c.content.String()
				m.Content = &s
			}
			if c.hasReasoning {
				s := c.reasoning.String()
				m.ReasoningContent = &s
			}
			for _, tc := range c.toolCalls {
				var o outToolCall
				o.ID, o.Type = tc.id, tc.typ
				if o.Type == "" {
					o.Type = "function"
				}
				o.Function.Name, o.Function.Arguments = tc.name, tc.args.String()
				m.ToolCalls = append(m.ToolCalls, o)
			}
			oc.Message = m
		} else {
			s := c.text.String()
			oc.Text = &s
		}
		out.Choices = append(out.Choices, oc)
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil
	}
	return b
}

// messageOf turns an error value ("boom", {"message":"boom"}, ...) into text.
func messageOf(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) == nil {
		for _, k := range []string{"message", "detail", "msg", "error"} {
			if v, ok := obj[k]; ok && !isNull(v) {
				return messageOf(v)
			}
		}
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) == nil {
		return clip(b.String(), 1024)
	}
	return clip(string(raw), 1024)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return cutUTF8(s, n) + "…"
}

// cutUTF8 shortens s to at most n bytes without splitting a UTF-8 sequence.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
