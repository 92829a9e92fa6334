package schema

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultMaxEventBytes is the default limit on the size of one encoded event.
const DefaultMaxEventBytes = 1 << 20

// Limits bounds what Decode accepts.
type Limits struct {
	// MaxEventBytes is the largest encoded event accepted, in bytes.
	// Zero means DefaultMaxEventBytes; a negative value means no limit.
	MaxEventBytes int
}

// DefaultLimits returns the limits of the collector: events up to 1 MiB.
func DefaultLimits() Limits { return Limits{MaxEventBytes: DefaultMaxEventBytes} }

// maxDepth bounds nesting in request, response and metadata, as
// encoding/json does.
const maxDepth = 10000

// Decode parses one call event (schema v1) from data, applies the defaults
// (trace_id = id, status = 200, source = "online") and validates it.
//
// Decode is strict:
//   - data must fit lim, be valid UTF-8 (also inside strings; encoding/json
//     would silently turn bad bytes into U+FFFD) and be exactly one JSON
//     object, with nothing but whitespace after it;
//   - field names are matched exactly (case-sensitive); an unknown field or a
//     field given twice is an error, also inside usage and metadata;
//   - numbers anywhere, including inside request, response and metadata,
//     must be finite as float64 (1e999 is rejected);
//   - integers (status, usage) may be written in any JSON notation with an
//     integral value (2, 2.0, 2e0), as in JSON Schema;
//   - null in an optional field means the field is absent; an empty string
//     in an optional string field is also absent (as with omitempty);
//   - every rule of Validate applies.
//
// All errors are a ValidationError. Errors about the event as a whole (size,
// UTF-8, JSON syntax, not an object) have Field EventField and are reported
// alone; otherwise all field errors are reported, in schema order.
//
// The returned Event shares no memory with data. To keep allocations few,
// the strings of one Event share one allocation, and Request, Response and
// the Metadata values share another (each slice is capped, so appending to
// one cannot overwrite another).
func Decode(data []byte, lim Limits) (*Event, error) {
	return decode(data, lim, false)
}

// DecodeShared is Decode without copying the event's raw values: Request,
// Response and the Metadata values point into data (capped, as with
// Decode), so data must not change while the Event is in use. It is for
// callers that are done with the Event before they let go of data: the
// collector, which re-encodes the event at once, and the normalizer, which
// turns it into a call. Raw values are most of an event's bytes.
func DecodeShared(data []byte, lim Limits) (*Event, error) {
	return decode(data, lim, true)
}

// Decoder is DecodeShared for a caller that is done with each Event before
// it decodes the next (the collector, which re-encodes it at once): it
// reuses the Event, what its pointers point to and its string buffer, so
// the Event it returns changes with its next DecodeShared. Strings stay
// (they are copied out once per event). Not safe for concurrent use.
type Decoder struct {
	blk  eventBlock
	sbuf []byte
}

// DecodeShared decodes data as the package's DecodeShared does, into d's
// storage.
func (d *Decoder) DecodeShared(data []byte, lim Limits) (*Event, error) {
	d.blk = eventBlock{}
	return decodeInto(data, lim, true, &d.blk, &d.sbuf)
}

func decode(data []byte, lim Limits, shared bool) (*Event, error) {
	return decodeInto(data, lim, shared, new(eventBlock), nil)
}

// decodeInto decodes into blk (zeroed), with the string buffer *sbuf
// (nil: its own), which keeps what it grew to.
func decodeInto(data []byte, lim Limits, shared bool, blk *eventBlock, sbuf *[]byte) (*Event, error) {
	limit := lim.MaxEventBytes
	if limit == 0 {
		limit = DefaultMaxEventBytes
	}
	if limit > 0 && len(data) > limit {
		return nil, eventError("event is " + strconv.Itoa(len(data)) + " bytes, limit " + strconv.Itoa(limit))
	}
	if !utf8.Valid(data) {
		return nil, eventError("invalid UTF-8 at byte offset " + strconv.Itoa(invalidUTF8Offset(data)))
	}
	e := &blk.event
	d := decoder{scanner: scanner{data: data}, blk: blk, shared: shared}
	if sbuf != nil {
		d.sbuf = (*sbuf)[:0]
	}
	d.event(e)
	if sbuf != nil && cap(d.sbuf) > cap(*sbuf) {
		*sbuf = d.sbuf[:0]
	}
	if d.fatal != nil {
		return nil, ValidationError{d.fatal}
	}
	d.finish(e)
	e.ApplyDefaults()
	e.check(&d.errs, true)
	if err := d.errs.err(); err != nil {
		return nil, err
	}
	return e, nil
}

func invalidUTF8Offset(b []byte) int {
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}

// eventBlock holds an Event and the values its pointers refer to, so that
// they take one allocation.
type eventBlock struct {
	event   Event
	times   [2]time.Time // end_time, first_token_time
	usage   Usage
	tokens  [3]int64
	capture Capture
}

// span locates bytes in one of the decoder's buffers.
type span struct{ off, n int }

// strRef is a top-level string field waiting for the string buffer.
type strRef struct {
	dst *string
	s   span
}

// metaRef is a metadata member: key in sbuf, value in rbuf.
type metaRef struct {
	key, val span
	overflow int // offset in data of a number overflowing float64, or -1
}

// decoder is a single-pass, validating JSON scanner specialised for Event.
// It needs no reflection. Strings are decoded into sbuf and raw values
// copied into rbuf; finish points the Event into them.
type decoder struct {
	scanner
	errs errList

	blk   *eventBlock
	sbuf  []byte
	strs  [numFields + 1]strRef // + capture.mask_set
	nstrs int
	tags  []span
	meta  []metaRef
	rbuf  []byte
	// shared: raw values are spans of data, not of rbuf (DecodeShared)
	shared bool
	req    span
	resp   span
}

// finish points e's strings, tags, metadata, request and response into the
// buffers, now that they are complete.
func (d *decoder) finish(e *Event) {
	arena := string(d.sbuf)
	str := func(s span) string { return arena[s.off : s.off+s.n] }
	for _, r := range d.strs[:d.nstrs] {
		*r.dst = str(r.s)
	}
	if len(d.tags) > 0 {
		e.Tags = make([]string, len(d.tags))
		for i, s := range d.tags {
			e.Tags[i] = str(s)
		}
	}
	rbuf := d.rbuf
	if d.shared {
		rbuf = d.data
	}
	raw := func(s span) json.RawMessage { return rbuf[s.off : s.off+s.n : s.off+s.n] }
	if d.req.n > 0 {
		e.Request = raw(d.req)
	}
	if d.resp.n > 0 {
		e.Response = raw(d.resp)
	}
	if len(d.meta) > 0 {
		m := make(map[string]json.RawMessage, len(d.meta))
		for _, r := range d.meta {
			k := str(r.key)
			switch _, dup := m[k]; {
			case dup:
				d.errs.add(fMetadata, "metadata."+truncField(k), "duplicate key")
			case r.overflow >= 0:
				d.errs.add(fMetadata, "metadata."+truncField(k), overflowReason(d.data, r.overflow))
				m[k] = nil // so that a later duplicate is one
			default:
				m[k] = raw(r.val)
			}
		}
		e.Metadata = m
	}
}

// event decodes the top-level object into e, recording field errors.
func (d *decoder) event(e *Event) {
	d.skipWS()
	if d.pos >= len(d.data) {
		d.syntaxError(d.pos, "empty input")
		return
	}
	if d.data[d.pos] != '{' {
		kind := d.skipValue(0)
		if d.fatal == nil {
			d.trailing()
		}
		if d.fatal == nil {
			d.fatal = &FieldError{Field: EventField, Reason: "must be a JSON object, got " + kind}
		}
		return
	}
	d.pos++
	var seen uint32
	d.skipWS()
	if d.peek() == '}' {
		d.pos++
	} else if !d.members(func(key []byte) {
		f := lookupField(key)
		switch {
		case f < 0:
			d.errs.add(unknownOrder, truncField(string(key)), "unknown field")
			d.skipValue(1)
		case seen&(1<<f) != 0:
			d.errs.add(f, fieldNames[f], "duplicate key")
			d.skipValue(1)
		default:
			seen |= 1 << f
			d.field(e, f)
		}
	}) {
		return
	}
	d.trailing()
}

// members scans the members of the object whose '{' and the white space
// after it d has stepped over, up to its closing '}': value decodes the
// value of the member whose key was just scanned. members reports whether
// the object ended without a syntax error.
func (d *decoder) members(value func(key []byte)) bool {
	for {
		key, ok := d.memberKey()
		if !ok {
			return false
		}
		value(key)
		if d.fatal != nil {
			return false
		}
		if more, ok := d.next('}'); !ok {
			return false
		} else if !more {
			return true
		}
	}
}

// truncField bounds an unknown field name used as an error path.
func truncField(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + "…"
}

// stringBytes scans a string (an object key or a value) and returns its
// content, unescaped. The returned bytes alias data unless the string has
// escapes.
func (d *scanner) stringBytes() ([]byte, bool) {
	start, end, esc, ok := d.scanString()
	if !ok {
		return nil, false
	}
	if esc {
		return appendUnquoted(nil, d.data[start:end]), true
	}
	return d.data[start:end], true
}

func (d *decoder) field(e *Event, f int) {
	switch f {
	case fID:
		d.str(f, &e.ID, false)
	case fTraceID:
		d.str(f, &e.TraceID, true)
	case fSessionID:
		d.str(f, &e.SessionID, true)
	case fStartTime:
		if t, ok := d.timestamp(f, false); ok {
			e.StartTime = t
		}
	case fEndTime:
		if t, ok := d.timestamp(f, true); ok {
			d.blk.times[0] = t
			e.EndTime = &d.blk.times[0]
		}
	case fFirstTokenTime:
		if t, ok := d.timestamp(f, true); ok {
			d.blk.times[1] = t
			e.FirstTokenTime = &d.blk.times[1]
		}
	case fEndpoint:
		d.str(f, &e.Endpoint, false)
	case fModel:
		d.str(f, &e.Model, false)
	case fInstance:
		d.str(f, &e.Instance, true)
	case fUser:
		d.str(f, &e.User, true)
	case fAPIKey:
		d.str(f, &e.APIKey, true)
	case fAPIKeyHash:
		d.str(f, &e.APIKeyHash, true)
	case fAPIKeyPrefix:
		d.str(f, &e.APIKeyPrefix, true)
	case fRequest:
		d.req = d.raw(f, true)
	case fResponse:
		d.resp = d.raw(f, true)
	case fStream:
		e.Stream = d.boolean(f, fieldNames[f])
	case fStatus:
		e.Status = d.status()
	case fError:
		d.str(f, &e.Error, true)
	case fUsage:
		e.Usage = d.usage()
	case fMetadata:
		d.metadata()
	case fTags:
		d.tagList()
	case fSource:
		if !d.null() {
			e.Source = d.enum(f, "source", `"online" or "batch"`, SourceOnline, SourceBatch)
		}
	case fBatchID:
		d.str(f, &e.BatchID, true)
	case fRequestTruncated:
		e.RequestTruncated = d.boolean(f, fieldNames[f])
	case fCapture:
		e.Capture = d.capture()
	}
}

// open steps into the object or array (opening '{' or '[') of field f at
// path: open is false for null (absent) and for another kind of value (an
// error naming want); empty reports that it was closed at once.
func (d *decoder) open(f int, path string, opening byte, want string) (open, empty bool) {
	if d.null() {
		return false, false
	}
	if d.peek() != opening {
		d.mismatch(f, path, want)
		return false, false
	}
	d.pos++
	d.skipWS()
	if c := d.peek(); (opening == '{' && c == '}') || (opening == '[' && c == ']') {
		d.pos++
		return true, true
	}
	return true, false
}

// nestedKey is the index of key among keys, the members of the object at
// path in field f, and marks it seen; an unknown or repeated key is recorded
// as an error and its value skipped (-1).
func (d *decoder) nestedKey(f int, path string, key []byte, keys []string, seen *uint8) int {
	i := -1
	for j, k := range keys {
		if string(key) == k {
			i = j
			break
		}
	}
	switch {
	case i < 0:
		d.errs.add(f, path+"."+truncField(string(key)), "unknown field")
	case *seen&(1<<i) != 0:
		d.errs.add(f, path+"."+keys[i], "duplicate key")
		i = -1
	default:
		*seen |= 1 << i
		return i
	}
	d.skipValue(2)
	return -1
}

// captureKeys are the members of the capture object.
var captureKeys = [3]string{"mode", "mask_set", "counted"}

// capture decodes the capture object; its mode must be a known one.
func (d *decoder) capture() *Capture {
	open, empty := d.open(fCapture, "capture", '{', "an object")
	if empty {
		d.errs.add(fCapture, "capture.mode", "required")
	}
	if !open || empty {
		return nil
	}
	c := &d.blk.capture
	var seen uint8
	if !d.members(func(key []byte) {
		switch d.nestedKey(fCapture, "capture", key, captureKeys[:], &seen) {
		case 0:
			c.Mode = d.enum(fCapture, "capture.mode", `"full", "truncated" or "none"`, CaptureFull, CaptureTruncated, CaptureNone)
		case 1:
			d.strAt(fCapture, "capture.mask_set", &c.MaskSet, true)
		case 2:
			c.Counted = d.boolean(fCapture, "capture.counted")
		}
	}) {
		return nil
	}
	if seen&1 == 0 {
		d.errs.add(fCapture, "capture.mode", "required")
	}
	return c
}

// enum decodes the string of field f at path, which must be one of values
// (want lists them), and returns that value, a constant rather than a copy
// of the input; "" after an error, which it records.
func (d *decoder) enum(f int, path, want string, values ...string) string {
	if d.peek() != '"' {
		d.mismatch(f, path, want)
		return ""
	}
	s, ok := d.stringBytes()
	if !ok {
		return ""
	}
	for _, v := range values {
		if string(s) == v {
			return v
		}
	}
	d.errs.add(f, path, "must be "+want+", got "+quoteTrunc(string(s)))
	return ""
}

// mismatch records that field f at path holds the wrong JSON type and skips
// the value.
func (d *decoder) mismatch(f int, path, want string) {
	depth := 1 // a top-level field
	if path != fieldNames[f] {
		depth = 2 // tags[i], usage.x
	}
	kind := d.skipValue(depth)
	if d.fatal == nil {
		d.errs.add(f, path, "must be "+want+", got "+kind)
	}
}

func (d *decoder) null() bool {
	if len(d.data)-d.pos >= 4 && string(d.data[d.pos:d.pos+4]) == "null" {
		d.pos += 4
		return true
	}
	return false
}

// strValue decodes the string at d.pos into sbuf.
func (d *decoder) strValue() (span, bool) {
	start, end, esc, ok := d.scanString()
	if !ok {
		return span{}, false
	}
	if d.sbuf == nil {
		d.sbuf = make([]byte, 0, 256)
	}
	off := len(d.sbuf)
	if esc {
		d.sbuf = appendUnquoted(d.sbuf, d.data[start:end])
	} else {
		d.sbuf = append(d.sbuf, d.data[start:end]...)
	}
	return span{off, len(d.sbuf) - off}, true
}

// str decodes a string field into *dst (at finish); null is "" if nullable,
// otherwise a type error.
func (d *decoder) str(f int, dst *string, nullable bool) {
	d.strAt(f, fieldNames[f], dst, nullable)
}

// strAt is str for the string at path, a member of field f.
func (d *decoder) strAt(f int, path string, dst *string, nullable bool) {
	if d.peek() == '"' {
		if s, ok := d.strValue(); ok && s.n > 0 {
			d.strs[d.nstrs] = strRef{dst, s}
			d.nstrs++
		}
		return
	}
	if nullable && d.null() {
		return
	}
	d.mismatch(f, path, "a string")
}

func (d *decoder) timestamp(f int, nullable bool) (t time.Time, ok bool) {
	if d.peek() != '"' {
		if !(nullable && d.null()) {
			d.mismatch(f, fieldNames[f], "an RFC 3339 timestamp string")
		}
		return t, false
	}
	t, reason, ok := d.timestampString()
	if reason != "" {
		d.errs.add(f, fieldNames[f], reason)
	}
	return t, ok && reason == ""
}

// boolean decodes the boolean at path, field f or a member of it; null is
// false.
func (d *decoder) boolean(f int, path string) bool {
	switch {
	case len(d.data)-d.pos >= 4 && string(d.data[d.pos:d.pos+4]) == "true":
		d.pos += 4
		return true
	case len(d.data)-d.pos >= 5 && string(d.data[d.pos:d.pos+5]) == "false":
		d.pos += 5
	case d.null():
	default:
		d.mismatch(f, path, "a boolean")
	}
	return false
}

// rawValue copies any JSON value into rbuf (shared: only notes where it is
// in data). overflow is the offset of its first number overflowing
// float64, or -1.
func (d *decoder) rawValue(depth int) (s span, kind string, overflow int) {
	start := d.pos
	d.overflow = -1
	kind = d.skipValue(depth)
	if d.fatal != nil {
		return span{}, "", -1
	}
	if d.shared {
		return span{start, d.pos - start}, kind, d.overflow
	}
	if d.rbuf == nil {
		// Raw values are most of an event: size the buffer for all of them
		// at once, as what remains of the input bounds their total size;
		// but don't let a small value pin a large remainder.
		n := len(d.data) - start
		if n > 64<<10 && n > 2*(d.pos-start) {
			n = 2 * (d.pos - start)
		}
		d.rbuf = make([]byte, 0, n)
	}
	off := len(d.rbuf)
	d.rbuf = append(d.rbuf, d.data[start:d.pos]...)
	return span{off, d.pos - start}, kind, d.overflow
}

// raw decodes request or response; null is absent.
func (d *decoder) raw(f int, nullable bool) span {
	s, kind, overflow := d.rawValue(1)
	switch {
	case d.fatal != nil:
	case overflow >= 0:
		d.errs.add(f, fieldNames[f], overflowReason(d.data, overflow))
	case nullable && kind == "null":
	default:
		return s
	}
	return span{}
}

func overflowReason(data []byte, off int) string {
	end := off
	for end < len(data) && strings.IndexByte("+-.0123456789eE", data[end]) >= 0 {
		end++
	}
	return "number " + truncLit(data[off:end]) + " is out of range (overflows float64)"
}

// number scans the number of field f at path and returns its literal; nil
// for null (absent) and after an error, which it records (a value of
// another type must be want).
func (d *decoder) number(f int, path, want string) []byte {
	if d.null() {
		return nil
	}
	c := d.peek()
	if c != '-' && (c < '0' || c > '9') {
		d.mismatch(f, path, want)
		return nil
	}
	start := d.pos
	if !d.scanNumber() {
		return nil
	}
	return d.data[start:d.pos]
}

func (d *decoder) status() int {
	const want = "an integer between 100 and 599"
	lit := d.number(fStatus, "status", want)
	if lit == nil {
		return 0
	}
	v, st := parseInt(lit)
	if st != intOK || v < 100 || v > 599 {
		d.errs.add(fStatus, "status", "must be "+want+", got "+truncLit(lit))
		return 0
	}
	return int(v)
}

func truncLit(lit []byte) string {
	if len(lit) > 32 {
		return string(lit[:32]) + "…"
	}
	return string(lit)
}

var (
	usageKeys  = [3]string{"prompt_tokens", "completion_tokens", "total_tokens"}
	usageNames = [3]string{"usage.prompt_tokens", "usage.completion_tokens", "usage.total_tokens"}
)

func (d *decoder) usage() *Usage {
	open, empty := d.open(fUsage, "usage", '{', "an object")
	if !open {
		return nil
	}
	u := &d.blk.usage
	if empty {
		return u
	}
	var seen uint8
	if !d.members(func(key []byte) {
		if i := d.nestedKey(fUsage, "usage", key, usageKeys[:], &seen); i >= 0 {
			p := d.tokens(usageNames[i], &d.blk.tokens[i])
			switch i {
			case 0:
				u.PromptTokens = p
			case 1:
				u.CompletionTokens = p
			case 2:
				u.TotalTokens = p
			}
		}
	}) {
		return nil
	}
	return u
}

// tokens decodes a token count into *dst and returns dst, or nil if the
// count is null or invalid.
func (d *decoder) tokens(path string, dst *int64) *int64 {
	const want = "a non-negative integer"
	lit := d.number(fUsage, path, want)
	if lit == nil {
		return nil
	}
	v, st := parseInt(lit)
	switch {
	case st == intFraction || (st == intOK && v < 0) || (st == intRange && lit[0] == '-'):
		d.errs.add(fUsage, path, "must be "+want+", got "+truncLit(lit))
		return nil
	case st == intRange:
		d.errs.add(fUsage, path, "must be "+want+" at most 9223372036854775807, got "+truncLit(lit))
		return nil
	}
	*dst = v
	return dst
}

// metadata scans the metadata object into d.meta; finish builds the map and
// reports duplicate keys and overflowing numbers, in document order. An
// empty object is absent, as with omitempty.
func (d *decoder) metadata() {
	if open, empty := d.open(fMetadata, "metadata", '{', "an object"); !open || empty {
		return
	}
	for {
		if d.peek() != '"' {
			d.unexpectedKey()
			return
		}
		k, ok := d.strValue()
		if !ok || !d.expect(':', "':'") {
			return
		}
		d.skipWS()
		v, _, overflow := d.rawValue(2)
		if d.fatal != nil {
			return
		}
		d.meta = append(d.meta, metaRef{k, v, overflow})
		if more, _ := d.next('}'); !more {
			return
		}
	}
}

// tagList scans the tags array into d.tags. An empty array is absent, as
// with omitempty.
func (d *decoder) tagList() {
	if open, empty := d.open(fTags, "tags", '[', "an array of strings"); !open || empty {
		return
	}
	for i := 0; ; i++ {
		if d.peek() == '"' {
			if s, ok := d.strValue(); ok {
				d.tags = append(d.tags, s)
			}
		} else {
			d.mismatch(fTags, "tags["+strconv.Itoa(i)+"]", "a string")
		}
		if d.fatal != nil {
			return
		}
		if more, _ := d.next(']'); !more {
			return
		}
	}
}
