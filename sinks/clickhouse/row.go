package clickhouse

import (
	"encoding/json"
	"reflect"
	"sort"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/callpipe/callpipe/schema"
)

// callBlock is a batch of calls as one typed slice per column of CallColumns
// (same order), for the driver's columnar append: far cheaper than a
// reflective Append per row.
type callBlock struct {
	id, traceID, sessionID                   []string
	startTime                                []time.Time
	startMS                                  []uint16
	endTime                                  []time.Time
	endMS                                    []uint16
	firstTokenTime                           []*time.Time
	firstTokenMS                             []*uint16
	latencyMS                                []int64
	ttftMS                                   []*int64
	endpoint, kind, model, instance          []string
	userID, userSource, apiKeyHash, apiKeyPx []string
	stream                                   []uint8
	status                                   []int32
	errorText, finishReason                  []string
	inputText, outputText, input, output     []string
	modelParameters                          []string
	inputTokens, outputTokens, totalTokens   []int64
	usageSource                              []string
	costUSD                                  []*float64
	metadata                                 []string
	tags                                     [][]string
	source, batchID                          []string
	truncated                                []uint8
	insertedAt                               []time.Time
	version                                  []uint64
	captureMode, captureMaskSet              []string
}

// newCallBlock sizes every column for n rows up front: appending 40 columns
// of 50,000 rows into nil slices re-allocates and copies each ~17 times.
func newCallBlock(n int) *callBlock {
	return &callBlock{
		id: mk[string](n), traceID: mk[string](n), sessionID: mk[string](n),
		startTime: mk[time.Time](n), startMS: mk[uint16](n), endTime: mk[time.Time](n), endMS: mk[uint16](n),
		firstTokenTime: mk[*time.Time](n), firstTokenMS: mk[*uint16](n),
		latencyMS: mk[int64](n), ttftMS: mk[*int64](n),
		endpoint: mk[string](n), kind: mk[string](n), model: mk[string](n), instance: mk[string](n),
		userID: mk[string](n), userSource: mk[string](n), apiKeyHash: mk[string](n), apiKeyPx: mk[string](n),
		stream: mk[uint8](n), status: mk[int32](n), errorText: mk[string](n), finishReason: mk[string](n),
		inputText: mk[string](n), outputText: mk[string](n), input: mk[string](n), output: mk[string](n),
		modelParameters: mk[string](n), inputTokens: mk[int64](n), outputTokens: mk[int64](n), totalTokens: mk[int64](n),
		usageSource: mk[string](n), costUSD: mk[*float64](n), metadata: mk[string](n), tags: mk[[]string](n),
		source: mk[string](n), batchID: mk[string](n), truncated: mk[uint8](n), insertedAt: mk[time.Time](n),
		version: mk[uint64](n), captureMode: mk[string](n), captureMaskSet: mk[string](n),
	}
}

func mk[T any](n int) []T { return make([]T, 0, n) }

// columns returns the slices in CallColumns order.
func (b *callBlock) columns() []any {
	return []any{
		b.id, b.traceID, b.sessionID,
		b.startTime, b.startMS, b.endTime, b.endMS, b.firstTokenTime, b.firstTokenMS,
		b.latencyMS, b.ttftMS,
		b.endpoint, b.kind, b.model, b.instance,
		b.userID, b.userSource, b.apiKeyHash, b.apiKeyPx,
		b.stream, b.status, b.errorText, b.finishReason,
		b.inputText, b.outputText, b.input, b.output, b.modelParameters,
		b.inputTokens, b.outputTokens, b.totalTokens, b.usageSource, b.costUSD,
		b.metadata, b.tags, b.source, b.batchID,
		b.truncated, b.insertedAt, b.version,
		b.captureMode, b.captureMaskSet,
	}
}

// callColumns maps calls to the column slices of CallColumns. Text fields
// (input/output text, structured input/output, error) longer than maxText
// bytes are cut at a UTF-8 boundary and the row is marked truncated; a cut
// JSON document (input, output) is then no longer valid JSON.
func callColumns(calls []schema.Call, maxText int, now time.Time, version uint64) []any {
	b := newCallBlock(len(calls))
	inserted := now.UTC().Truncate(time.Second)
	for i := range calls {
		c := &calls[i]
		truncated := uint8(0)
		cut := func(s string) string {
			if maxText <= 0 || len(s) <= maxText {
				return s
			}
			truncated = 1
			s = s[:maxText]
			for i := 0; i < utf8.UTFMax-1 && len(s) > 0; i++ { // drop a rune cut in half
				r, size := utf8.DecodeLastRuneInString(s)
				if r != utf8.RuneError || size != 1 {
					break
				}
				s = s[:len(s)-1]
			}
			return s
		}
		sec, ms := splitTime(c.StartTime)
		esec, ems := splitTime(c.EndTime)
		var ft *time.Time
		var ftms *uint16
		if c.FirstTokenTime != nil {
			s, m := splitTime(*c.FirstTokenTime)
			ft, ftms = &s, &m
		}
		stream := uint8(0)
		if c.Stream {
			stream = 1
		}
		tags := c.Tags
		if tags == nil {
			tags = []string{}
		}
		b.id = append(b.id, c.ID)
		b.traceID = append(b.traceID, c.TraceID)
		b.sessionID = append(b.sessionID, c.SessionID)
		b.startTime = append(b.startTime, sec)
		b.startMS = append(b.startMS, ms)
		b.endTime = append(b.endTime, esec)
		b.endMS = append(b.endMS, ems)
		b.firstTokenTime = append(b.firstTokenTime, ft)
		b.firstTokenMS = append(b.firstTokenMS, ftms)
		b.latencyMS = append(b.latencyMS, c.LatencyMS)
		b.ttftMS = append(b.ttftMS, c.TTFTMS)
		b.endpoint = append(b.endpoint, c.Endpoint)
		b.kind = append(b.kind, c.Kind)
		b.model = append(b.model, c.Model)
		b.instance = append(b.instance, c.Instance)
		b.userID = append(b.userID, c.UserID)
		b.userSource = append(b.userSource, c.UserSource)
		b.apiKeyHash = append(b.apiKeyHash, c.APIKeyHash)
		b.apiKeyPx = append(b.apiKeyPx, c.APIKeyPrefix)
		b.stream = append(b.stream, stream)
		b.status = append(b.status, int32(c.Status))
		b.errorText = append(b.errorText, cut(c.Error))
		b.finishReason = append(b.finishReason, c.FinishReason)
		b.inputText = append(b.inputText, cut(c.InputText))
		b.outputText = append(b.outputText, cut(c.OutputText))
		b.input = append(b.input, cut(view(c.Input)))
		b.output = append(b.output, cut(view(c.Output)))
		b.modelParameters = append(b.modelParameters, jsonObject(c.ModelParameters))
		b.inputTokens = append(b.inputTokens, c.InputTokens)
		b.outputTokens = append(b.outputTokens, c.OutputTokens)
		b.totalTokens = append(b.totalTokens, c.TotalTokens)
		b.usageSource = append(b.usageSource, c.UsageSource)
		b.costUSD = append(b.costUSD, c.CostUSD)
		b.metadata = append(b.metadata, jsonObject(c.Metadata))
		b.tags = append(b.tags, tags)
		b.source = append(b.source, c.Source)
		b.batchID = append(b.batchID, c.BatchID)
		b.truncated = append(b.truncated, truncated)
		b.insertedAt = append(b.insertedAt, inserted)
		b.version = append(b.version, version)
		var mode, maskSet string
		if c.Capture != nil {
			mode, maskSet = c.Capture.Mode, c.Capture.MaskSet
		}
		b.captureMode = append(b.captureMode, mode)
		b.captureMaskSet = append(b.captureMaskSet, maskSet)
	}
	return b.columns()
}

// CallRow is the row the sink stores for c: the values of CallColumns, in
// order (what a VALUES insert of the same call must contain).
func CallRow(c *schema.Call, maxText int, now time.Time, version uint64) []any {
	cols := callColumns([]schema.Call{*c}, maxText, now, version)
	row := make([]any, len(cols))
	for j, col := range cols {
		row[j] = reflect.ValueOf(col).Index(0).Interface()
	}
	return row
}

// splitTime returns t in UTC truncated to the second, and its milliseconds.
func splitTime(t time.Time) (time.Time, uint16) {
	t = t.UTC()
	return t.Truncate(time.Second), uint16(t.Nanosecond() / int(time.Millisecond))
}

// view is b as a string without copying it: the column values live only
// until the driver has copied them into its column buffers, and the calls'
// decoded JSON is never modified.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// jsonObject renders a map as a JSON object with sorted keys ("" when empty).
func jsonObject(m map[string]json.RawMessage) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	size := 2
	for k, v := range m {
		keys = append(keys, k)
		size += len(k) + len(v) + 8
	}
	sort.Strings(keys)
	buf := make([]byte, 1, size)
	buf[0] = '{'
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = schema.AppendJSONString(buf, k)
		buf = append(buf, ':')
		if v := m[k]; len(v) > 0 {
			buf = append(buf, v...)
		} else {
			buf = append(buf, "null"...)
		}
	}
	return view(append(buf, '}')) // buf is this string's alone
}
