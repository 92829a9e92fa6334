package transform

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"unsafe"

	sjson "github.com/segmentio/encoding/json"

	"github.com/callpipe/callpipe/schema"
)

// maxPassthrough is the largest response kept as it is for kinds callpipe
// does not model (other); larger ones are summarised by size.
const maxPassthrough = 16 << 10

type usageCounts struct{ in, out, total int64 } // -1: missing

type extracted struct {
	inputText, outputText string
	extraOutput           string // counted as output tokens, not shown (reasoning)
	inputMessages         int
	input, output         json.RawMessage
	params                map[string]json.RawMessage
	finishReason          string
	errText               string
	usage                 usageCounts
	hasOutputTokens       bool
}

// ---- request ----

type toolCall struct {
	Index    *int         `json:"index,omitempty"`
	ID       string       `json:"id,omitempty"`
	Type     string       `json:"type,omitempty"`
	Function callFunction `json:"function"`
}

type callFunction struct {
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments"`
}

type reqMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	Name       string          `json:"name"`
	ToolCalls  []toolCall      `json:"tool_calls"`
	ToolCallID string          `json:"tool_call_id"`
}

type reqDoc struct {
	Messages  []reqMessage      `json:"messages"`
	System    json.RawMessage   `json:"system"`
	Prompt    json.RawMessage   `json:"prompt"`
	Input     json.RawMessage   `json:"input"`
	Query     json.RawMessage   `json:"query"`
	Documents []json.RawMessage `json:"documents"`

	Temperature         json.RawMessage `json:"temperature"`
	TopP                json.RawMessage `json:"top_p"`
	TopK                json.RawMessage `json:"top_k"`
	MinP                json.RawMessage `json:"min_p"`
	MaxTokens           json.RawMessage `json:"max_tokens"`
	MaxCompletionTokens json.RawMessage `json:"max_completion_tokens"`
	N                   json.RawMessage `json:"n"`
	Stop                json.RawMessage `json:"stop"`
	Seed                json.RawMessage `json:"seed"`
	PresencePenalty     json.RawMessage `json:"presence_penalty"`
	FrequencyPenalty    json.RawMessage `json:"frequency_penalty"`
	RepetitionPenalty   json.RawMessage `json:"repetition_penalty"`
	Logprobs            json.RawMessage `json:"logprobs"`
	TopLogprobs         json.RawMessage `json:"top_logprobs"`
	ResponseFormat      json.RawMessage `json:"response_format"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	Stream              json.RawMessage `json:"stream"`
	Dimensions          json.RawMessage `json:"dimensions"`
	EncodingFormat      json.RawMessage `json:"encoding_format"`
	Size                json.RawMessage `json:"size"`
	Quality             json.RawMessage `json:"quality"`
	Style               json.RawMessage `json:"style"`
	Voice               json.RawMessage `json:"voice"`
	Speed               json.RawMessage `json:"speed"`
	TopN                json.RawMessage `json:"top_n"`
	ReturnDocuments     json.RawMessage `json:"return_documents"`
	Language            json.RawMessage `json:"language"`
	Tools               []reqTool       `json:"tools"`
}

type reqTool struct {
	Name     string       `json:"name"` // anthropic
	Function toolFunction `json:"function"`
}

type toolFunction struct {
	Name string `json:"name"`
}

func (r *reqDoc) modelParameters() map[string]json.RawMessage {
	fields := [...]struct {
		name string
		v    json.RawMessage
	}{
		{"temperature", r.Temperature}, {"top_p", r.TopP}, {"top_k", r.TopK}, {"min_p", r.MinP},
		{"max_tokens", r.MaxTokens}, {"max_completion_tokens", r.MaxCompletionTokens}, {"n", r.N},
		{"stop", r.Stop}, {"seed", r.Seed}, {"presence_penalty", r.PresencePenalty},
		{"frequency_penalty", r.FrequencyPenalty}, {"repetition_penalty", r.RepetitionPenalty},
		{"logprobs", r.Logprobs}, {"top_logprobs", r.TopLogprobs}, {"response_format", r.ResponseFormat},
		{"tool_choice", r.ToolChoice}, {"stream", r.Stream}, {"dimensions", r.Dimensions},
		{"encoding_format", r.EncodingFormat}, {"size", r.Size}, {"quality", r.Quality}, {"style", r.Style},
		{"voice", r.Voice}, {"speed", r.Speed}, {"top_n", r.TopN}, {"return_documents", r.ReturnDocuments},
		{"language", r.Language},
	}
	var m map[string]json.RawMessage
	for _, f := range fields {
		if len(f.v) == 0 || isNull(f.v) {
			continue
		}
		if m == nil {
			m = make(map[string]json.RawMessage, 8)
		}
		m[f.name] = f.v
	}
	if len(r.Tools) > 0 {
		names := make([]string, 0, len(r.Tools))
		for _, t := range r.Tools {
			n := t.Function.Name
			if n == "" {
				n = t.Name
			}
			names = append(names, n)
		}
		if m == nil {
			m = map[string]json.RawMessage{}
		}
		m["tools"] = mustJSON(names)
	}
	return m
}

// ---- response ----

type respMessage struct {
	Role             string          `json:"role"`
	Content          json.RawMessage `json:"content"`
	ReasoningContent *string         `json:"reasoning_content"`
	ToolCalls        []toolCall      `json:"tool_calls"`
}

type respChoice struct {
	Index        int          `json:"index"`
	Message      *respMessage `json:"message"`
	Delta        *respMessage `json:"delta"`
	Text         *string      `json:"text"`
	FinishReason *string      `json:"finish_reason"`
}

type respDoc struct {
	Object     string                `json:"object"`
	Choices    []respChoice          `json:"choices"`
	Data       []respData            `json:"data"`
	Results    []respResult          `json:"results"`
	Meta       *respMeta             `json:"meta"`
	Usage      *schema.ReportedUsage `json:"usage"`
	Text       *string               `json:"text"`
	Content    json.RawMessage       `json:"content"` // anthropic
	StopReason string                `json:"stop_reason"`
	Error      json.RawMessage       `json:"error"`
	Detail     json.RawMessage       `json:"detail"`
	// summaries written by the proxy for bodies it did not keep
	ContentType string `json:"content_type"`
	Bytes       *int64 `json:"bytes"`
}

type respData struct {
	Embedding json.RawMessage `json:"embedding"`
	URL       string          `json:"url"`
	B64JSON   json.RawMessage `json:"b64_json"`
}

type respResult struct {
	Index          int             `json:"index"`
	RelevanceScore float64         `json:"relevance_score"`
	Document       json.RawMessage `json:"document"`
}

type respMeta struct {
	Tokens *schema.ReportedUsage `json:"tokens"`
}

// extract reads the text, structure and parameters of a call from its
// request and response bodies. Bodies it cannot parse are ignored.
func extract(kind string, reqRaw, respRaw json.RawMessage) extracted {
	x := extracted{usage: usageCounts{-1, -1, -1}, hasOutputTokens: kind == schema.KindChat || kind == schema.KindCompletion}
	d := docPool.Get().(*docs)
	defer docPool.Put(d)
	d.fd.space.reset()
	req := &d.req
	*req = reqDoc{}
	if len(reqRaw) > 0 && reqRaw[0] == '{' && decodeRequest(reqRaw, req, d) {
		x.params = req.modelParameters()
		x.request(kind, req)
	}
	if len(respRaw) == 0 {
		return x
	}
	resp := &d.resp
	*resp = respDoc{}
	switch respRaw[0] {
	case '{':
		if !decodeResponse(respRaw, resp, d) {
			return x
		}
	case '[': // a streamed response captured as its list of chunks
		chunks, ok := decodeChunks(respRaw, d)
		if !ok {
			return x
		}
		*resp = mergeChunks(chunks)
	default:
		return x
	}
	x.response(kind, resp, respRaw)
	return x
}

// docs are the decoded bodies of one extract, reused: they are large
// structs that would otherwise be allocated for every call. Nothing of
// them outlives extract (strings and raw values point into the bodies).
type docs struct {
	req     reqDoc
	resp    respDoc
	msgs    []reqMessage // req.Messages' array, kept for the next call
	choices []respChoice // resp.Choices' array, likewise
	fd      fastDoc      // the binder of each body, and the space of what the response points to
}

func newDocs() *docs { return &docs{fd: fastDoc{space: newSpace()}} }

var docPool = sync.Pool{New: func() any { return newDocs() }}

// bind points d's binder at raw, keeping its space.
func (d *docs) bind(raw json.RawMessage) *fastDoc {
	d.fd = fastDoc{Binder: schema.NewBinder(raw), space: d.fd.space}
	return &d.fd
}

// decodeRequest decodes a request body into r (zeroed) with the binder of
// into (nil: a new one), or when it gives up with unmarshal; false: the
// body is not a request.
func decodeRequest(raw json.RawMessage, r *reqDoc, into *docs) bool {
	if into == nil {
		into = newDocs()
	}
	d := into.bind(raw)
	d.msgBuf = into.msgs
	if d.request(r) {
		if cap(r.Messages) > cap(into.msgs) {
			into.msgs = r.Messages[:0]
		}
		return true
	}
	*r = reqDoc{}
	return unmarshal(raw, r) == nil
}

// decodeResponse is decodeRequest for a response body, its choices and the
// values they point to in into's arrays.
func decodeResponse(raw json.RawMessage, r *respDoc, into *docs) bool {
	if into == nil {
		into = newDocs()
	}
	d := into.bind(raw)
	d.choiceBuf = into.choices
	if d.response(0, r) {
		if cap(r.Choices) > cap(into.choices) {
			into.choices = r.Choices[:0]
		}
		return true
	}
	*r = respDoc{}
	return unmarshal(raw, r) == nil
}

// decodeChunks is decodeRequest for a streamed response's chunks, the
// values they point to in into's space.
func decodeChunks(raw json.RawMessage, into *docs) ([]respDoc, bool) {
	if chunks, ok := into.bind(raw).chunks(); ok {
		return chunks, true
	}
	var chunks []respDoc
	return chunks, unmarshal(raw, &chunks) == nil
}

// quotedLen is the length of raw when it is a JSON string, else 0: the
// size of the text it holds, at most, for sizing a text buffer.
func quotedLen(raw json.RawMessage) int {
	if len(raw) > 0 && raw[0] == '"' {
		return len(raw)
	}
	return 0
}

func (x *extracted) request(kind string, r *reqDoc) {
	switch {
	case len(r.Messages) > 0 || len(r.System) > 0:
		var text strings.Builder
		size := quotedLen(r.System)
		for i := range r.Messages {
			size += quotedLen(r.Messages[i].Content) + 1
		}
		text.Grow(size)
		msgs := make([]outMessage, 0, len(r.Messages)+1)
		if len(r.System) > 0 && !isNull(r.System) {
			content, t := contentOf(r.System)
			msgs = append(msgs, outMessage{Role: "system", Content: content})
			text.WriteString(t)
		}
		for i := range r.Messages {
			m := &r.Messages[i]
			content, t := contentOf(m.Content)
			om := outMessage{Role: m.Role, Content: content, Name: m.Name, ToolCallID: m.ToolCallID}
			if text.Len() > 0 && t != "" {
				text.WriteByte('\n')
			}
			text.WriteString(t)
			om.addToolCalls(m.ToolCalls, &text)
			msgs = append(msgs, om)
		}
		x.inputText = text.String()
		x.inputMessages = len(msgs)
		x.input = appendMessages(make([]byte, 0, size+48*len(msgs)), msgs)
	case kind == schema.KindRerank || (len(r.Query) > 0 && r.Documents != nil):
		q := stringOf(r.Query)
		docs := make([]string, 0, len(r.Documents))
		for _, d := range r.Documents {
			_, t := contentOf(d)
			if t == "" {
				t = stringOf(objectField(d, "text"))
			}
			docs = append(docs, t)
		}
		x.inputText = strings.Join(append([]string{q}, docs...), "\n")
		x.input = mustJSON(struct {
			Query     string   `json:"query"`
			Documents []string `json:"documents"`
		}{q, docs})
	case len(r.Prompt) > 0 && !isNull(r.Prompt):
		v, t := textsOf(r.Prompt)
		x.inputText, x.input = t, v
	case len(r.Input) > 0 && !isNull(r.Input):
		v, t := textsOf(r.Input)
		x.inputText, x.input = t, v
	}
}

func (x *extracted) response(kind string, r *respDoc, raw json.RawMessage) {
	x.usage = usageOf(r.Usage)
	if x.usage.in < 0 && x.usage.out < 0 && r.Meta != nil {
		x.usage = usageOf(r.Meta.Tokens) // rerank: meta.tokens
	}
	if len(r.Error) > 0 && !isNull(r.Error) {
		x.errText = messageOf(r.Error)
	} else if len(r.Detail) > 0 && !isNull(r.Detail) {
		x.errText = messageOf(r.Detail)
	}
	switch {
	case len(r.Choices) > 0:
		x.choices(r.Choices)
	case len(r.Content) > 0 && r.Content[0] == '[': // anthropic messages
		content, text, calls := anthropicOutput(r.Content)
		x.outputText = text
		x.finishReason = r.StopReason
		x.output = appendOutMessage(nil, &outMessage{Role: "assistant", Content: content, ToolCalls: calls})
	case len(r.Results) > 0:
		type result struct {
			Index          int     `json:"index"`
			RelevanceScore float64 `json:"relevance_score"`
		}
		out := make([]result, len(r.Results))
		for i, res := range r.Results {
			out[i] = result{res.Index, res.RelevanceScore}
		}
		x.output = mustJSON(out)
	case len(r.Data) > 0 && (kind == schema.KindEmbedding || len(r.Data[0].Embedding) > 0):
		dims := -1
		if e := r.Data[0].Embedding; len(e) > 0 && e[0] == '[' {
			dims = countElements(e)
		}
		s := map[string]any{"embeddings": len(r.Data)}
		if dims >= 0 {
			s["dimensions"] = dims
		} else {
			s["encoding"] = "base64"
		}
		x.output = mustJSON(s)
	case len(r.Data) > 0:
		urls, b64 := []string{}, 0
		for _, d := range r.Data {
			switch {
			case len(d.B64JSON) > 0 && !isNull(d.B64JSON):
				b64++
			case strings.HasPrefix(d.URL, "data:"):
				b64++
			case d.URL != "":
				urls = append(urls, d.URL)
			}
		}
		s := map[string]any{"images": len(r.Data)}
		if len(urls) > 0 {
			s["urls"] = urls
		}
		if b64 > 0 {
			s["inline"] = b64
		}
		if kind == schema.KindVideo {
			s = map[string]any{"videos": len(r.Data), "urls": urls}
		}
		x.output = mustJSON(s)
	case r.Text != nil:
		x.outputText = *r.Text
		x.output = mustJSON(map[string]string{"text": *r.Text})
	case r.Bytes != nil: // the proxy's summary of a binary body (speech, video)
		x.output = raw
	case x.errText == "" && len(raw) <= maxPassthrough:
		x.output = raw
	case x.errText == "":
		x.output = mustJSON(map[string]int{"bytes": len(raw)})
	}
}

func (x *extracted) choices(choices []respChoice) {
	var text strings.Builder
	size := 0
	for i := range choices {
		switch ch := &choices[i]; {
		case ch.Text != nil:
			size += len(*ch.Text) + 1
		case ch.Message != nil:
			size += quotedLen(ch.Message.Content) + 1
		case ch.Delta != nil:
			size += quotedLen(ch.Delta.Content) + 1
		}
	}
	text.Grow(size)
	// The outputs are written as a JSON array; one output is sent without
	// the brackets (out[1:]).
	out := make([]byte, 1, size+64*len(choices))
	out[0] = '['
	outs := 0
	next := func() {
		if outs > 0 {
			out = append(out, ',')
		}
		outs++
	}
	for _, ch := range choices {
		if ch.FinishReason != nil && x.finishReason == "" {
			x.finishReason = *ch.FinishReason
		}
		if text.Len() > 0 {
			text.WriteByte('\n')
		}
		if ch.Text != nil && ch.Message == nil { // completion
			text.WriteString(*ch.Text)
			next()
			out = schema.AppendJSONString(out, *ch.Text)
			continue
		}
		m := ch.Message
		if m == nil {
			m = ch.Delta
		}
		if m == nil {
			continue
		}
		content, t := contentOf(m.Content)
		text.WriteString(t)
		role := m.Role
		if role == "" {
			role = "assistant"
		}
		om := outMessage{Role: role, Content: content}
		if m.ReasoningContent != nil {
			om.ReasoningContent = *m.ReasoningContent
			x.extraOutput += *m.ReasoningContent
		}
		om.addToolCalls(m.ToolCalls, &text)
		next()
		out = appendOutMessage(out, &om)
	}
	x.outputText = text.String()
	switch outs {
	case 0:
	case 1:
		x.output = out[1:]
	default:
		x.output = append(out, ']')
	}
}

// mergeChunks folds streamed chunks (chat.completion.chunk or completion
// chunks) into one response: content concatenated per choice, tool calls
// assembled by index, the last finish reason, usage and error kept.
func mergeChunks(chunks []respDoc) respDoc {
	var out respDoc
	type acc struct {
		role, content, reasoning strings.Builder
		text                     *strings.Builder
		finish                   *string
		hasReasoning             bool
		calls                    []toolCall
		args                     []strings.Builder
	}
	byIndex := map[int]*acc{}
	var order []int
	for i := range chunks {
		c := &chunks[i]
		if c.Usage != nil {
			out.Usage = c.Usage
		}
		if len(c.Error) > 0 && !isNull(c.Error) {
			out.Error = c.Error
		}
		for _, ch := range c.Choices {
			a := byIndex[ch.Index]
			if a == nil {
				a = &acc{}
				byIndex[ch.Index] = a
				order = append(order, ch.Index)
			}
			if ch.FinishReason != nil {
				a.finish = ch.FinishReason
			}
			if ch.Text != nil {
				if a.text == nil {
					a.text = &strings.Builder{}
				}
				a.text.WriteString(*ch.Text)
			}
			d := ch.Delta
			if d == nil {
				d = ch.Message
			}
			if d == nil {
				continue
			}
			if d.Role != "" && a.role.Len() == 0 {
				a.role.WriteString(d.Role)
			}
			if len(d.Content) > 0 {
				_, t := contentOf(d.Content)
				a.content.WriteString(t)
			}
			if d.ReasoningContent != nil {
				a.hasReasoning = true
				a.reasoning.WriteString(*d.ReasoningContent)
			}
			for _, tc := range d.ToolCalls {
				idx := len(a.calls)
				if tc.Index != nil {
					idx = *tc.Index
				}
				for len(a.calls) <= idx {
					a.calls = append(a.calls, toolCall{})
					a.args = append(a.args, strings.Builder{})
				}
				if tc.ID != "" {
					a.calls[idx].ID = tc.ID
				}
				if tc.Type != "" {
					a.calls[idx].Type = tc.Type
				}
				if tc.Function.Name != "" {
					a.calls[idx].Function.Name = tc.Function.Name
				}
				a.args[idx].WriteString(stringOf(tc.Function.Arguments))
			}
		}
	}
	for _, i := range order {
		a := byIndex[i]
		ch := respChoice{Index: i, FinishReason: a.finish}
		if a.text != nil && a.content.Len() == 0 && len(a.calls) == 0 {
			s := a.text.String()
			ch.Text = &s
		} else {
			m := &respMessage{Role: a.role.String(), Content: mustJSON(a.content.String())}
			if a.hasReasoning {
				s := a.reasoning.String()
				m.ReasoningContent = &s
			}
			for j, tc := range a.calls {
				tc.Index = nil
				tc.Function.Arguments = mustJSON(a.args[j].String())
				m.ToolCalls = append(m.ToolCalls, tc)
			}
			ch.Message = m
		}
		out.Choices = append(out.Choices, ch)
	}
	return out
}

// ---- shapes written to schema.Call.Input / Output ----

type outFunction struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

type outToolCall struct {
	ID       string      `json:"id,omitempty"`
	Type     string      `json:"type"`
	Function outFunction `json:"function"`
}

type outMessage struct {
	Role             string         `json:"role"`
	Content          messageContent `json:"content,omitzero"`
	ReasoningContent string         `json:"reasoning_content,omitempty"`
	Name             string         `json:"name,omitempty"`
	ToolCalls        []outToolCall  `json:"tool_calls,omitempty"`
	ToolCallID       string         `json:"tool_call_id,omitempty"`
}

// appendMessages appends msgs as json.Marshal does, without reflection.
func appendMessages(b []byte, msgs []outMessage) []byte {
	b = append(b, '[')
	for i := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendOutMessage(b, &msgs[i])
	}
	return append(b, ']')
}

// appendOutMessage appends m as json.Marshal does (TestAppendOutMessage):
// the hot path of every chat call, where reflection cost more than the
// rest of building the message.
func appendOutMessage(b []byte, m *outMessage) []byte {
	b = append(b, `{"role":`...)
	b = schema.AppendJSONString(b, m.Role)
	if !m.Content.IsZero() {
		b = append(b, `,"content":`...)
		b = m.Content.appendJSON(b)
	}
	if m.ReasoningContent != "" {
		b = append(b, `,"reasoning_content":`...)
		b = schema.AppendJSONString(b, m.ReasoningContent)
	}
	if m.Name != "" {
		b = append(b, `,"name":`...)
		b = schema.AppendJSONString(b, m.Name)
	}
	if len(m.ToolCalls) > 0 {
		b = append(b, `,"tool_calls":[`...)
		for i := range m.ToolCalls {
			tc := &m.ToolCalls[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			if tc.ID != "" {
				b = append(b, `"id":`...)
				b = schema.AppendJSONString(b, tc.ID)
				b = append(b, ',')
			}
			b = append(b, `"type":`...)
			b = schema.AppendJSONString(b, tc.Type)
			b = append(b, `,"function":{"name":`...)
			b = schema.AppendJSONString(b, tc.Function.Name)
			b = append(b, `,"arguments":`...)
			b = schema.AppendJSONString(b, tc.Function.Arguments)
			b = append(b, "}}"...)
		}
		b = append(b, ']')
	}
	if m.ToolCallID != "" {
		b = append(b, `,"tool_call_id":`...)
		b = schema.AppendJSONString(b, m.ToolCallID)
	}
	return append(b, '}')
}

// addToolCalls adds calls to the message and to text, each as a line
// "name(arguments)" (after a line break unless text is empty).
func (om *outMessage) addToolCalls(calls []toolCall, text *strings.Builder) {
	for _, tc := range calls {
		otc := outToolCallOf(tc)
		om.ToolCalls = append(om.ToolCalls, otc)
		if text.Len() > 0 {
			text.WriteByte('\n')
		}
		text.WriteString(otc.Function.Name + "(" + otc.Function.Arguments + ")")
	}
}

func outToolCallOf(tc toolCall) outToolCall {
	t := tc.Type
	if t == "" {
		t = "function"
	}
	args := stringOf(tc.Function.Arguments)
	if args == "" && len(tc.Function.Arguments) > 0 && tc.Function.Arguments[0] == '{' {
		args = string(tc.Function.Arguments)
	}
	return outToolCall{ID: tc.ID, Type: t, Function: outFunction{Name: tc.Function.Name, Arguments: args}}
}

// messageContent is a message's content for display: none, a string, or
// parts (text kept, media summarised). A string is held as such, not boxed
// in an interface: every chat message has one.
type messageContent struct {
	text  string
	parts []map[string]any
	kind  contentKind
}

type contentKind uint8

const (
	contentNone contentKind = iota
	contentText
	contentParts
)

func textContent(s string) messageContent { return messageContent{text: s, kind: contentText} }

// IsZero reports a message without content (omitted from its JSON).
func (c messageContent) IsZero() bool { return c.kind == contentNone }

// MarshalJSON writes the string, the parts, or null.
func (c messageContent) MarshalJSON() ([]byte, error) { return c.appendJSON(nil), nil }

func (c messageContent) appendJSON(b []byte) []byte {
	switch c.kind {
	case contentText:
		return schema.AppendJSONString(b, c.text)
	case contentParts: // rare, and maps need sorted keys
		if enc := mustJSON(c.parts); enc != nil {
			return append(b, enc...)
		}
	}
	return append(b, "null"...)
}

// contentOf returns a message content for display and its text.
func contentOf(raw json.RawMessage) (messageContent, string) {
	if len(raw) == 0 || isNull(raw) {
		return messageContent{}, ""
	}
	switch raw[0] {
	case '"':
		s := stringOf(raw)
		return textContent(s), s
	case '[':
		var parts []map[string]json.RawMessage
		if json.Unmarshal(raw, &parts) != nil {
			return messageContent{}, ""
		}
		out := make([]map[string]any, 0, len(parts))
		var text strings.Builder
		for _, p := range parts {
			typ := stringOf(p["type"])
			switch {
			case typ == "text" || typ == "input_text" || typ == "output_text" || (typ == "" && p["text"] != nil):
				t := stringOf(p["text"])
				out = append(out, map[string]any{"type": "text", "text": t})
				if text.Len() > 0 {
					text.WriteByte('\n')
				}
				text.WriteString(t)
			case typ == "tool_use": // anthropic
				args := string(p["input"])
				out = append(out, map[string]any{"type": typ, "name": stringOf(p["name"]), "input": json.RawMessage(args)})
				if text.Len() > 0 {
					text.WriteByte('\n')
				}
				text.WriteString(stringOf(p["name"]) + "(" + args + ")")
			case typ == "tool_result": // anthropic
				c, t := contentOf(p["content"])
				out = append(out, map[string]any{"type": typ, "tool_use_id": stringOf(p["tool_use_id"]), "content": c})
				if text.Len() > 0 && t != "" {
					text.WriteByte('\n')
				}
				text.WriteString(t)
			default:
				out = append(out, mediaSummary(typ, p))
			}
		}
		return messageContent{parts: out, kind: contentParts}, text.String()
	}
	return messageContent{}, ""
}

// mediaSummary replaces an image, audio, video or file part with its type,
// and its URL when it is a link (data: URLs and inline bytes give their size).
func mediaSummary(typ string, p map[string]json.RawMessage) map[string]any {
	s := map[string]any{"type": typ}
	for _, k := range []string{"image_url", "video_url", "audio_url", "input_audio", "file", "source"} {
		v, ok := p[k]
		if !ok {
			continue
		}
		url := stringOf(v)
		if url == "" {
			url = stringOf(objectField(v, "url"))
		}
		switch {
		case url != "" && !strings.HasPrefix(url, "data:"):
			s["url"] = url
		default:
			s["bytes"] = len(v)
		}
	}
	return s
}

func anthropicOutput(raw json.RawMessage) (messageContent, string, []outToolCall) {
	var parts []map[string]json.RawMessage
	if json.Unmarshal(raw, &parts) != nil {
		return messageContent{}, "", nil
	}
	var text strings.Builder
	var calls []outToolCall
	for _, p := range parts {
		switch stringOf(p["type"]) {
		case "text":
			text.WriteString(stringOf(p["text"]))
		case "tool_use":
			c := outToolCall{ID: stringOf(p["id"]), Type: "function", Function: outFunction{Name: stringOf(p["name"]), Arguments: string(p["input"])}}
			calls = append(calls, c)
		}
	}
	t := text.String()
	out := t
	for _, c := range calls {
		if out != "" {
			out += "\n"
		}
		out += c.Function.Name + "(" + c.Function.Arguments + ")"
	}
	return textContent(t), out, calls
}

// textsOf reads a prompt or input: a string, a list of strings, or token
// ids (summarised by count).
func textsOf(raw json.RawMessage) (json.RawMessage, string) {
	switch raw[0] {
	case '"':
		s := stringOf(raw)
		return mustJSON(s), s
	case '[':
		var ss []string
		if json.Unmarshal(raw, &ss) == nil {
			return mustJSON(ss), strings.Join(ss, "\n")
		}
		var parts []map[string]json.RawMessage // multimodal embedding input
		if json.Unmarshal(raw, &parts) == nil {
			content, t := contentOf(raw)
			return mustJSON(content), t
		}
		return mustJSON(map[string]int{"token_ids": countElements(raw)}), ""
	}
	return nil, ""
}

func usageOf(u *schema.ReportedUsage) usageCounts {
	if u == nil {
		return usageCounts{-1, -1, -1}
	}
	return usageCounts{count(u.Prompt()), count(u.Completion()), count(u.TotalTokens)}
}

// count is a valid token count, or -1 (missing, negative as Xinference's -1,
// fractional or absurd).
func count(f *float64) int64 {
	if n, ok := schema.TokenCount(f); ok {
		return n
	}
	return -1
}

func messageOf(raw json.RawMessage) string {
	if raw[0] == '"' {
		return stringOf(raw)
	}
	var obj struct {
		Message json.RawMessage `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	}
	if raw[0] == '{' && json.Unmarshal(raw, &obj) == nil {
		if s := stringOf(obj.Message); s != "" {
			return s
		}
		if s := stringOf(obj.Detail); s != "" {
			return s
		}
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) == nil {
		return buf.String()
	}
	return string(raw)
}

func stringOf(raw json.RawMessage) string {
	if len(raw) == 0 || raw[0] != '"' {
		return ""
	}
	// fast path: no escapes. The string shares raw's bytes instead of
	// copying them: raw is part of a body no one writes to (the event's
	// request or response, or JSON built here), and the call's texts that
	// point into it live no longer than the event.
	if inner := raw[1 : len(raw)-1]; bytes.IndexByte(inner, '\\') < 0 {
		if len(inner) == 0 {
			return ""
		}
		return unsafe.String(&inner[0], len(inner))
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

func objectField(raw json.RawMessage, key string) json.RawMessage {
	if len(raw) == 0 || raw[0] != '{' {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	return m[key]
}

// countElements counts the elements of a flat JSON array of scalars.
func countElements(raw json.RawMessage) int {
	inner := bytes.TrimSpace(raw[1 : len(raw)-1])
	if len(inner) == 0 {
		return 0
	}
	return bytes.Count(inner, []byte{','}) + 1
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 4 && string(raw) == "null"
}

// unmarshal decodes request and response bodies with segmentio's
// encoding/json-compatible decoder, without copying strings and raw values:
// they point into the event's own buffers, which live as long as the call.
func unmarshal(data []byte, v any) error {
	rest, err := sjson.Parse(data, v, sjson.ZeroCopy)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

// mustJSON encodes v like encoding/json, faster (segmentio/encoding).
func mustJSON(v any) json.RawMessage {
	b, err := sjson.Marshal(v)
	if err != nil {
		return nil
	}
	return b
}
