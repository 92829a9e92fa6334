package transform

import (
	"encoding/json"

	"github.com/callpipe/callpipe/schema"
)

// The request and response bodies of a call are read twice: schema.Decode
// validates them, extract takes what it needs. Decoding them again into
// reqDoc and respDoc by reflection cost more than all the rest of
// normalizing a call, so extract binds them by hand here, on a body already
// known to be valid JSON, with no reflection and with strings pointing into
// the body.
//
// The binder handles the bodies model servers send. Anything unusual,
// where matching segmentio's encoding/json-compatible decoding exactly
// would take more than the common case needs (a key that matches a field
// only case-insensitively or is written with escapes, a field given twice,
// a value of an unexpected type, a number out of range), makes it give up,
// and extract decodes that body the reflective way (unmarshal).
// FuzzFastDocMatchesUnmarshal holds the two to the same result.

// fastDoc binds one body (schema.Binder).
type fastDoc struct {
	schema.Binder
	msgBuf    []reqMessage // an array for the request's messages to reuse
	choiceBuf []respChoice // one for a response's choices (not chunks': each has its own)
	space     space
}

// space is storage a decode takes the values its documents point to from,
// instead of allocating each: arrays of the pooled docs of one extract,
// so what is decoded into them lives no longer than those docs. A full
// array (or none) leaves the decode to allocate.
type space struct {
	msgs   []respMessage
	usage  []schema.ReportedUsage
	floats []float64
	strs   []string
}

func newSpace() space {
	return space{msgs: make([]respMessage, 0, 4), usage: make([]schema.ReportedUsage, 0, 2),
		floats: make([]float64, 0, 8), strs: make([]string, 0, 8)}
}

// reset makes every array of s free again.
func (s *space) reset() {
	s.msgs, s.usage, s.floats, s.strs = s.msgs[:0], s.usage[:0], s.floats[:0], s.strs[:0]
}

// take is the next free element of *arr, zeroed, or a new T when *arr is
// full (or arr nil).
func take[T any](arr *[]T) *T {
	if arr == nil || len(*arr) == cap(*arr) {
		return new(T)
	}
	a := (*arr)[:len(*arr)+1]
	*arr = a
	p := &a[len(a)-1]
	var zero T
	*p = zero
	return p
}

// floatPtr is Binder.FloatPtr with the number stored in d's space.
func (d *fastDoc) floatPtr(from int, dst **float64) int {
	if d.Null(from) {
		*dst = nil
		return d.Skip(from)
	}
	p := take(&d.space.floats)
	*dst = p
	return d.Float(from, p)
}

// stringPtr decodes a string or null into *dst, the string header stored
// in d's space.
func (d *fastDoc) stringPtr(from int, dst **string) int {
	if d.Null(from) {
		*dst = nil
		return d.Skip(from)
	}
	p := take(&d.space.strs)
	*dst = p
	return d.Str(from, p)
}

// memberFunc binds member key of *e, whose value starts at from, and
// returns where the value ended and the field's bit (for Binder.Seen);
// bit -1: key names no field of e.
type memberFunc[T any] func(d *fastDoc, e *T, key []byte, from int) (to, bit int)

// members binds the members of object m into e, and returns where the
// object ended. Keys no field takes are skipped (Binder.Unknown).
func members[T any](d *fastDoc, m schema.Members, e *T, fields schema.FieldSet, member memberFunc[T]) int {
	var mask uint64
	for key, from, ok := m.Next(); ok; key, from, ok = m.Next() {
		to, bit := member(d, e, key, from)
		if bit < 0 {
			d.Unknown(key, fields)
			to = d.Skip(from)
		} else {
			d.Seen(&mask, bit)
		}
		m.At(to)
	}
	return m.End()
}

// object binds the object at i into the next T of arr (take; null: nil),
// and returns where it ended.
func object[T any](d *fastDoc, i int, dst **T, arr *[]T, fields schema.FieldSet, member memberFunc[T]) int {
	m, ok := d.Nested(i)
	if !ok {
		*dst = nil
		return d.Skip(i)
	}
	e := take(arr)
	*dst = e
	return members(d, m, e, fields, member)
}

// list binds the array at i, a list of objects, into *dst (null: nil, []:
// an empty list) and returns where it ended; buf is an array to reuse. An
// element that is not an object makes the binder give up.
func list[T any](d *fastDoc, i int, dst *[]T, buf []T, fields schema.FieldSet, member memberFunc[T]) int {
	it, isArray := d.Array(i)
	*dst = nil
	if !isArray {
		return d.Skip(i)
	}
	out := buf[:0]
	for from, ok := it.Next(); ok; from, ok = it.Next() {
		var zero T
		out = append(out, zero)
		m, ok := d.Object(from)
		if !ok {
			d.Fail() // null or another type: left to encoding/json's rules
			return 0
		}
		it.At(members(d, m, &out[len(out)-1], fields, member))
	}
	if out == nil {
		out = []T{}
	}
	*dst = out
	return it.End()
}

var (
	reqSet      = schema.FieldsOf(reqFields)
	messageSet  = schema.FieldsOf("role content name tool_calls tool_call_id")
	toolCallSet = schema.FieldsOf("index id type function")
	functionSet = schema.FieldsOf("name arguments")
	toolSet     = schema.FieldsOf("name function")
	toolFuncSet = schema.FieldsOf("name")
	respSet     = schema.FieldsOf(respFields)
	choiceSet   = schema.FieldsOf("index message delta text finish_reason")
	respMsgSet  = schema.FieldsOf("role content reasoning_content tool_calls")
	usageSet    = schema.FieldsOf("prompt_tokens completion_tokens total_tokens input_tokens output_tokens")
	metaSet     = schema.FieldsOf("tokens")
	dataSet     = schema.FieldsOf("embedding url b64_json")
	resultSet   = schema.FieldsOf("index relevance_score document")
)

// ---- request ----

const reqFields = "messages system prompt input query documents temperature top_p top_k min_p max_tokens " +
	"max_completion_tokens n stop seed presence_penalty frequency_penalty repetition_penalty logprobs " +
	"top_logprobs response_format tool_choice stream dimensions encoding_format size quality style voice " +
	"speed top_n return_documents language tools"

// request binds the request body into r (zeroed); false: decode it with
// unmarshal.
func (d *fastDoc) request(r *reqDoc) bool {
	m, ok := d.Object(0)
	if !ok {
		return false
	}
	members(d, m, r, reqSet, requestMember)
	return !d.Failed()
}

func requestMember(d *fastDoc, r *reqDoc, key []byte, from int) (to, bit int) {
	var dst *json.RawMessage
	switch string(key) {
	case "messages":
		return list(d, from, &r.Messages, d.msgBuf, messageSet, messageMember), 1
	case "documents":
		return d.documents(from, r), 2
	case "tools":
		return list(d, from, &r.Tools, nil, toolSet, toolMember), 3
	case "system":
		bit, dst = 4, &r.System
	case "prompt":
		bit, dst = 5, &r.Prompt
	case "input":
		bit, dst = 6, &r.Input
	case "query":
		bit, dst = 7, &r.Query
	case "temperature":
		bit, dst = 8, &r.Temperature
	case "top_p":
		bit, dst = 9, &r.TopP
	case "top_k":
		bit, dst = 10, &r.TopK
	case "min_p":
		bit, dst = 11, &r.MinP
	case "max_tokens":
		bit, dst = 12, &r.MaxTokens
	case "max_completion_tokens":
		bit, dst = 13, &r.MaxCompletionTokens
	case "n":
		bit, dst = 14, &r.N
	case "stop":
		bit, dst = 15, &r.Stop
	case "seed":
		bit, dst = 16, &r.Seed
	case "presence_penalty":
		bit, dst = 17, &r.PresencePenalty
	case "frequency_penalty":
		bit, dst = 18, &r.FrequencyPenalty
	case "repetition_penalty":
		bit, dst = 19, &r.RepetitionPenalty
	case "logprobs":
		bit, dst = 20, &r.Logprobs
	case "top_logprobs":
		bit, dst = 21, &r.TopLogprobs
	case "response_format":
		bit, dst = 22, &r.ResponseFormat
	case "tool_choice":
		bit, dst = 23, &r.ToolChoice
	case "stream":
		bit, dst = 24, &r.Stream
	case "dimensions":
		bit, dst = 25, &r.Dimensions
	case "encoding_format":
		bit, dst = 26, &r.EncodingFormat
	case "size":
		bit, dst = 27, &r.Size
	case "quality":
		bit, dst = 28, &r.Quality
	case "style":
		bit, dst = 29, &r.Style
	case "voice":
		bit, dst = 30, &r.Voice
	case "speed":
		bit, dst = 31, &r.Speed
	case "top_n":
		bit, dst = 32, &r.TopN
	case "return_documents":
		bit, dst = 33, &r.ReturnDocuments
	case "language":
		bit, dst = 34, &r.Language
	default:
		return 0, -1
	}
	return d.Raw(from, dst), bit
}

func (d *fastDoc) documents(i int, r *reqDoc) int {
	it, isArray := d.Array(i)
	r.Documents = nil
	if !isArray {
		return d.Skip(i)
	}
	r.Documents = make([]json.RawMessage, 0, 4)
	for from, ok := it.Next(); ok; from, ok = it.Next() {
		r.Documents = append(r.Documents, nil)
		it.At(d.Raw(from, &r.Documents[len(r.Documents)-1]))
	}
	return it.End()
}

func messageMember(d *fastDoc, msg *reqMessage, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "role":
		return d.Str(from, &msg.Role), 0
	case "content":
		return d.Raw(from, &msg.Content), 1
	case "name":
		return d.Str(from, &msg.Name), 2
	case "tool_calls":
		return list(d, from, &msg.ToolCalls, nil, toolCallSet, toolCallMember), 3
	case "tool_call_id":
		return d.Str(from, &msg.ToolCallID), 4
	}
	return 0, -1
}

func toolCallMember(d *fastDoc, tc *toolCall, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "index":
		return d.IntPtr(from, &tc.Index), 0
	case "id":
		return d.Str(from, &tc.ID), 1
	case "type":
		return d.Str(from, &tc.Type), 2
	case "function":
		return inPlace(d, from, &tc.Function, functionSet, functionMember), 3
	}
	return 0, -1
}

// inPlace binds the object at i into *e as it is (null leaves it), and
// returns where it ended.
func inPlace[T any](d *fastDoc, i int, e *T, fields schema.FieldSet, member memberFunc[T]) int {
	m, ok := d.Nested(i)
	if !ok {
		return d.Skip(i)
	}
	return members(d, m, e, fields, member)
}

func functionMember(d *fastDoc, f *callFunction, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "name":
		return d.Str(from, &f.Name), 0
	case "arguments":
		return d.Raw(from, &f.Arguments), 1
	}
	return 0, -1
}

func toolMember(d *fastDoc, t *reqTool, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "name":
		return d.Str(from, &t.Name), 0
	case "function":
		return inPlace(d, from, &t.Function, toolFuncSet, toolFunctionMember), 1
	}
	return 0, -1
}

func toolFunctionMember(d *fastDoc, f *toolFunction, key []byte, from int) (to, bit int) {
	if string(key) == "name" {
		return d.Str(from, &f.Name), 0
	}
	return 0, -1
}

// ---- response ----

const respFields = "object choices data results meta usage text content stop_reason error detail content_type bytes"

// response binds the response object at i into r (zeroed); false: decode
// it with unmarshal.
func (d *fastDoc) response(i int, r *respDoc) bool {
	_, ok := d.responseAt(i, r)
	return ok
}

func (d *fastDoc) responseAt(i int, r *respDoc) (int, bool) {
	m, ok := d.Object(i)
	if !ok {
		return 0, false
	}
	end := members(d, m, r, respSet, responseMember)
	return end, !d.Failed()
}

func responseMember(d *fastDoc, r *respDoc, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "object":
		return d.Str(from, &r.Object), 0
	case "choices":
		return list(d, from, &r.Choices, d.choiceBuf, choiceSet, choiceMember), 1
	case "data":
		return list(d, from, &r.Data, nil, dataSet, dataMember), 2
	case "results":
		return list(d, from, &r.Results, nil, resultSet, resultMember), 3
	case "meta":
		return object(d, from, &r.Meta, nil, metaSet, metaMember), 4
	case "usage":
		return object(d, from, &r.Usage, &d.space.usage, usageSet, usageMember), 5
	case "text":
		return d.stringPtr(from, &r.Text), 6
	case "content":
		return d.Raw(from, &r.Content), 7
	case "stop_reason":
		return d.Str(from, &r.StopReason), 8
	case "error":
		return d.Raw(from, &r.Error), 9
	case "detail":
		return d.Raw(from, &r.Detail), 10
	case "content_type":
		return d.Str(from, &r.ContentType), 11
	case "bytes":
		return d.Int64Ptr(from, &r.Bytes), 12
	}
	return 0, -1
}

// chunks binds a streamed response (a list of chunks); false: decode it
// with unmarshal.
func (d *fastDoc) chunks() ([]respDoc, bool) {
	it, isArray := d.Array(0)
	if !isArray {
		return nil, false
	}
	out := []respDoc{}
	for from, ok := it.Next(); ok; from, ok = it.Next() {
		out = append(out, respDoc{})
		to, ok := d.responseAt(from, &out[len(out)-1])
		if !ok {
			return nil, false
		}
		it.At(to)
	}
	return out, !d.Failed()
}

func choiceMember(d *fastDoc, ch *respChoice, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "index":
		return d.Int(from, &ch.Index), 0
	case "message":
		return object(d, from, &ch.Message, &d.space.msgs, respMsgSet, respMessageMember), 1
	case "delta":
		return object(d, from, &ch.Delta, &d.space.msgs, respMsgSet, respMessageMember), 2
	case "text":
		return d.stringPtr(from, &ch.Text), 3
	case "finish_reason":
		return d.stringPtr(from, &ch.FinishReason), 4
	}
	return 0, -1
}

func respMessageMember(d *fastDoc, msg *respMessage, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "role":
		return d.Str(from, &msg.Role), 0
	case "content":
		return d.Raw(from, &msg.Content), 1
	case "reasoning_content":
		return d.stringPtr(from, &msg.ReasoningContent), 2
	case "tool_calls":
		return list(d, from, &msg.ToolCalls, nil, toolCallSet, toolCallMember), 3
	}
	return 0, -1
}

func usageMember(d *fastDoc, u *schema.ReportedUsage, key []byte, from int) (to, bit int) {
	var f **float64
	switch string(key) {
	case "prompt_tokens":
		bit, f = 0, &u.PromptTokens
	case "completion_tokens":
		bit, f = 1, &u.CompletionTokens
	case "total_tokens":
		bit, f = 2, &u.TotalTokens
	case "input_tokens":
		bit, f = 3, &u.InputTokens
	case "output_tokens":
		bit, f = 4, &u.OutputTokens
	default:
		return 0, -1
	}
	return d.floatPtr(from, f), bit
}

func metaMember(d *fastDoc, meta *respMeta, key []byte, from int) (to, bit int) {
	if string(key) == "tokens" {
		return object(d, from, &meta.Tokens, &d.space.usage, usageSet, usageMember), 0
	}
	return 0, -1
}

func dataMember(d *fastDoc, e *respData, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "embedding":
		return d.Raw(from, &e.Embedding), 0
	case "url":
		return d.Str(from, &e.URL), 1
	case "b64_json":
		return d.Raw(from, &e.B64JSON), 2
	}
	return 0, -1
}

func resultMember(d *fastDoc, r *respResult, key []byte, from int) (to, bit int) {
	switch string(key) {
	case "index":
		return d.Int(from, &r.Index), 0
	case "relevance_score":
		return d.Float(from, &r.RelevanceScore), 1
	case "document":
		return d.Raw(from, &r.Document), 2
	}
	return 0, -1
}
