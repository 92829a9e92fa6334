package schema

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Binder reads values out of valid JSON (checked before, as Decode checks
// an event's bodies) into Go values by hand: no reflection, every value
// read once, strings pointing into the data. It handles the plain cases
// and gives up (Failed) on anything where matching encoding/json exactly
// would take more: a key equal to a field's name but for case or written
// with escapes, a field given twice, a value of an unexpected type, a
// number out of range, invalid UTF-8. Its users then decode the same data
// with a full decoder, and a fuzz target holds the two to the same result
// (transform's FuzzFastDocMatchesUnmarshal).
//
// A user walks objects with Object and Members.Next, reads each value
// with one of the value methods (which return where the value ended) and
// reports that end with Members.At.
type Binder struct {
	data   []byte
	failed bool // the value needs a full decoder
}

// NewBinder reads data.
func NewBinder(data []byte) Binder { return Binder{data: data} }

// Failed reports whether the data needs a full decoder.
func (d *Binder) Failed() bool { return d.failed }

// Fail marks the data as needing a full decoder.
func (d *Binder) Fail() { d.failed = true }

func (d *Binder) ws(i int) int {
	for i < len(d.data) {
		switch d.data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// str returns the end of the string starting at i (a '"') and whether it
// holds escapes; plain text is skipped 8 bytes at a time. A control
// character or a bad escape makes the binder give up.
func (d *Binder) str(i int) (end int, esc bool) {
	data := d.data
	for i++; ; {
		for i+8 <= len(data) && !needsAttention(binary.LittleEndian.Uint64(data[i:])) {
			i += 8
		}
		for i < len(data) && strSafe[data[i]] {
			i++
		}
		if i >= len(data) || data[i] < 0x20 {
			d.failed = true
			return len(data), esc
		}
		if data[i] == '"' {
			return i + 1, esc
		}
		esc = true
		if i+1 >= len(data) {
			d.failed = true
			return len(data), esc
		}
		switch data[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			if i+6 > len(data) || unhex(data[i+2]) < 0 || unhex(data[i+3]) < 0 || unhex(data[i+4]) < 0 || unhex(data[i+5]) < 0 {
				d.failed = true
				return len(data), esc
			}
			i += 6
		default:
			d.failed = true
			return len(data), esc
		}
	}
}

// Skip returns the end of the value starting at i.
func (d *Binder) Skip(i int) int {
	data := d.data
	if i >= len(data) {
		d.failed = true
		return i
	}
	switch data[i] {
	case '"':
		end, _ := d.str(i)
		return end
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i, _ = d.str(i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		d.failed = true
		return i
	}
	from := i
	for i < len(data) { // number, true, false, null
		switch data[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			d.literal(data[from:i])
			return i
		}
		i++
	}
	d.literal(data[from:i])
	return i
}

// literal checks a number, true, false or null.
func (d *Binder) literal(lit []byte) {
	switch string(lit) {
	case "true", "false", "null":
		return
	}
	if !jsonNumber(lit) {
		d.failed = true
	}
}

// Members iterates over an object's members: next returns a key and where
// its value starts; the caller reads the value and reports where it ended
// with at before the next call.
type Members struct {
	d       *Binder
	i, n    int  // position, members read
	pending bool // a value was handed out and not yet ended with At
}

// Object starts iterating over the object at i; false when the value is
// not an object (bail is left to the caller: null may be fine).
func (d *Binder) Object(i int) (Members, bool) {
	i = d.ws(i)
	if i >= len(d.data) || d.data[i] != '{' {
		return Members{}, false
	}
	return Members{d: d, i: i + 1}, true
}

// At reports that the value Next handed out ended at to.
func (m *Members) At(to int) { m.i, m.pending = to, false }

// Next returns the next key and where its value starts; false at the end
// of the object or when the binder gave up.
func (m *Members) Next() (key []byte, from int, ok bool) {
	d := m.d
	if d == nil || d.failed || m.pending {
		if m.pending {
			d.failed = true
		}
		return nil, 0, false
	}
	i := d.ws(m.i)
	if i < len(d.data) && d.data[i] == '}' {
		m.i = i + 1
		return nil, 0, false
	}
	if m.n > 0 {
		if i >= len(d.data) || d.data[i] != ',' {
			d.failed = true
			return nil, 0, false
		}
		i = d.ws(i + 1)
	}
	m.n++
	if i >= len(d.data) || d.data[i] != '"' {
		d.failed = true
		return nil, 0, false
	}
	end, esc := d.str(i)
	if esc || d.failed {
		d.failed = true // a key with escapes
		return nil, 0, false
	}
	key = d.data[i+1 : end-1]
	i = d.ws(end)
	if i >= len(d.data) || d.data[i] != ':' {
		d.failed = true
		return nil, 0, false
	}
	from = d.ws(i + 1)
	if from >= len(d.data) {
		d.failed = true
		return nil, 0, false
	}
	m.pending = true
	return key, from, !d.failed
}

// End is where the object ended, after its last member was read.
func (m *Members) End() int { return m.i }

// Elements iterates over an array's elements like members.
type Elements struct {
	d       *Binder
	i, n    int
	pending bool
}

// Array starts iterating over the array at i. A null is (Elements{},
// false): the slice is set to nil, as encoding/json does; any other value
// makes the binder give up.
func (d *Binder) Array(i int) (it Elements, isArray bool) {
	i = d.ws(i)
	if i >= len(d.data) {
		d.failed = true
		return Elements{}, false
	}
	switch d.data[i] {
	case '[':
		return Elements{d: d, i: i + 1}, true
	case 'n':
		return Elements{}, false
	}
	d.failed = true
	return Elements{}, false
}

// At reports that the element Next handed out ended at to.
func (e *Elements) At(to int) { e.i, e.pending = to, false }

// Next returns where the next element starts; false at the end of the
// array or when the binder gave up.
func (e *Elements) Next() (from int, ok bool) {
	d := e.d
	if d == nil || d.failed || e.pending {
		if e.pending {
			d.failed = true
		}
		return 0, false
	}
	i := d.ws(e.i)
	if i < len(d.data) && d.data[i] == ']' {
		e.i = i + 1
		return 0, false
	}
	if e.n > 0 {
		if i >= len(d.data) || d.data[i] != ',' {
			d.failed = true
			return 0, false
		}
		i = d.ws(i + 1)
	}
	e.n++
	if i >= len(d.data) {
		d.failed = true
		return 0, false
	}
	e.pending = true
	return i, true
}

// End is where the array ended, after its last element was read.
func (e *Elements) End() int { return e.i }

// FieldSet is the names of an object's fields, for unknown.
type FieldSet map[string]bool

// FieldsOf is the set of the space-separated names.
func FieldsOf(names string) FieldSet {
	m := FieldSet{}
	for f := range strings.SplitSeq(names, " ") {
		m[f] = true
	}
	return m
}

// Unknown handles a key that names none of fields (the object's own): a
// key equal to a field name but for case, which encoding/json would take,
// makes the binder give up.
func (d *Binder) Unknown(key []byte, fields FieldSet) {
	var low [32]byte
	if len(key) > len(low) {
		return // longer than any field name
	}
	for i, b := range key {
		switch {
		case b >= utf8.RuneSelf: // may fold to ASCII (K, ſ)
			d.failed = true
			return
		case 'A' <= b && b <= 'Z':
			b += 'a' - 'A'
		}
		low[i] = b
	}
	if fields[string(low[:len(key)])] {
		d.failed = true
	}
}

// Seen marks field bit as set; a field given twice makes the binder give up.
func (d *Binder) Seen(mask *uint64, bit int) {
	if *mask&(1<<bit) != 0 {
		d.failed = true
	}
	*mask |= 1 << bit
}

func isNullAt(data []byte, i int) bool { return data[i] == 'n' }

// Null reports whether the value at i is null (a value Skip accepts).
func (d *Binder) Null(i int) bool { return isNullAt(d.data, i) }

// Raw reads the value at from as encoding/json fills a RawMessage.
func (d *Binder) Raw(from int, dst *json.RawMessage) int {
	to := d.Skip(from)
	*dst = d.data[from:to:to]
	return to
}

// Str decodes a string value into *dst; null leaves it.
func (d *Binder) Str(from int, dst *string) int {
	to := d.Skip(from)
	switch d.data[from] {
	case '"':
		*dst = d.unquote(from, to)
	case 'n':
	default:
		d.failed = true
	}
	return to
}

func (d *Binder) unquote(from, to int) string {
	raw := d.data[from:to]
	if d.failed || len(raw) < 2 || raw[len(raw)-1] != '"' {
		d.failed = true
		return ""
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		if len(raw) == 2 {
			return ""
		}
		if !utf8.Valid(raw) { // decoders replace bad bytes; schema.Decode lets none through
			d.failed = true
			return ""
		}
		return unsafe.String(&raw[1], len(raw)-2)
	}
	if !utf8.Valid(raw) {
		d.failed = true
		return ""
	}
	b := appendUnquoted(make([]byte, 0, len(raw)), raw[1:len(raw)-1]) // escapes checked by str
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// integer parses an integer literal of at most 18 digits; anything else
// (a fraction, an exponent, a large number) makes the binder give up.
func (d *Binder) integer(from, to int) int64 {
	lit := d.data[from:to]
	if len(lit) == 0 || len(lit) > 18 || !jsonInteger(lit) {
		d.failed = true
		return 0
	}
	n, err := strconv.ParseInt(unsafe.String(&lit[0], len(lit)), 10, 64)
	if err != nil {
		d.failed = true
	}
	return n
}

// Int decodes an integer into *dst; null leaves it.
func (d *Binder) Int(from int, dst *int) int {
	to := d.Skip(from)
	if !isNullAt(d.data, from) {
		*dst = int(d.integer(from, to))
	}
	return to
}

// IntPtr decodes an integer or null into *dst.
func (d *Binder) IntPtr(from int, dst **int) int {
	to := d.Skip(from)
	if isNullAt(d.data, from) {
		*dst = nil
		return to
	}
	v := int(d.integer(from, to))
	*dst = &v
	return to
}

// Int64Ptr decodes an integer or null into *dst. (Each pointer method is
// written out: a shared helper taking the parser as a func value would move
// every caller's Binder to the heap.)
func (d *Binder) Int64Ptr(from int, dst **int64) int {
	to := d.Skip(from)
	if isNullAt(d.data, from) {
		*dst = nil
		return to
	}
	v := d.integer(from, to)
	*dst = &v
	return to
}

func (d *Binder) float(from, to int) float64 {
	lit := d.data[from:to]
	if !jsonNumber(lit) {
		d.failed = true
		return 0
	}
	f, err := strconv.ParseFloat(unsafe.String(&lit[0], len(lit)), 64)
	if err != nil {
		d.failed = true
	}
	return f
}

// Float decodes a number into *dst; null leaves it.
func (d *Binder) Float(from int, dst *float64) int {
	to := d.Skip(from)
	if !isNullAt(d.data, from) {
		*dst = d.float(from, to)
	}
	return to
}

// FloatPtr decodes a number or null into *dst.
func (d *Binder) FloatPtr(from int, dst **float64) int {
	to := d.Skip(from)
	if isNullAt(d.data, from) {
		*dst = nil
		return to
	}
	v := d.float(from, to)
	*dst = &v
	return to
}

// Nested starts binding a nested object: null leaves it (or sets a
// pointer to nil), anything but an object makes the binder give up. The
// value ends at m.End() once iterated, or at Skip(i) when ok is false.
func (d *Binder) Nested(i int) (m Members, ok bool) {
	if isNullAt(d.data, i) {
		return Members{}, false
	}
	m, ok = d.Object(i)
	if !ok {
		d.failed = true
	}
	return m, ok
}

// jsonInteger reports whether lit is -?(0|[1-9][0-9]*).
func jsonInteger(lit []byte) bool {
	if len(lit) > 0 && lit[0] == '-' {
		lit = lit[1:]
	}
	if len(lit) == 0 || (lit[0] == '0' && len(lit) > 1) {
		return false
	}
	for _, c := range lit {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// jsonNumber reports whether lit is a JSON number.
func jsonNumber(lit []byte) bool {
	i := 0
	if i < len(lit) && lit[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(lit) && lit[i] >= '0' && lit[i] <= '9' {
			i++
			n++
		}
		return n
	}
	start := i
	if n := digits(); n == 0 || (n > 1 && lit[start] == '0') {
		return false
	}
	if i < len(lit) && lit[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(lit) && (lit[i] == 'e' || lit[i] == 'E') {
		i++
		if i < len(lit) && (lit[i] == '+' || lit[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(lit)
}

// Int64 decodes an integer into *dst; null leaves it.
func (d *Binder) Int64(from int, dst *int64) int {
	to := d.Skip(from)
	if !isNullAt(d.data, from) {
		*dst = d.integer(from, to)
	}
	return to
}

// Bool decodes true or false into *dst; null leaves it.
func (d *Binder) Bool(from int, dst *bool) int {
	to := d.Skip(from)
	switch string(d.data[from:to]) {
	case "true":
		*dst = true
	case "false":
		*dst = false
	case "null":
	default:
		d.failed = true
	}
	return to
}

// Time decodes an RFC 3339 time in UTC ("Z") into *dst as encoding/json
// does; null leaves it.
func (d *Binder) Time(from int, dst *time.Time) int {
	to := d.Skip(from)
	if !isNullAt(d.data, from) {
		*dst = d.parseTime(from, to)
	}
	return to
}

// TimePtr decodes a time as Time does, or null, into *dst.
func (d *Binder) TimePtr(from int, dst **time.Time) int {
	to := d.Skip(from)
	if isNullAt(d.data, from) {
		*dst = nil
		return to
	}
	t := d.parseTime(from, to)
	*dst = &t
	return to
}

// ValidRaw reads the value at from as encoding/json fills a RawMessage,
// checking all of its syntax (Skip trusts nested values); a nil dst only
// checks it.
func (d *Binder) ValidRaw(from int, dst *json.RawMessage) int {
	v := scanner{data: d.data, pos: from}
	if v.skipValue(1); v.fatal != nil {
		d.failed = true
		return len(d.data)
	}
	if dst != nil {
		*dst = d.data[from:v.pos:v.pos]
	}
	return v.pos
}

// RawMap decodes an object of raw values into *dst (a new map, empty for
// {}); null sets it to nil.
func (d *Binder) RawMap(from int, dst *map[string]json.RawMessage) int {
	m, ok := d.Nested(from)
	if !ok {
		if !d.failed {
			*dst = nil
		}
		return d.Skip(from)
	}
	if *dst == nil {
		*dst = map[string]json.RawMessage{}
	}
	for {
		key, from, ok := m.Next()
		if !ok {
			break
		}
		if !utf8.Valid(key) { // encoding/json would replace the bad bytes
			d.failed = true
			return len(d.data)
		}
		var v json.RawMessage
		m.At(d.ValidRaw(from, &v))
		(*dst)[unsafe.String(unsafe.SliceData(key), len(key))] = v
	}
	return m.End()
}

// Strings decodes an array of strings into *dst (empty for []); null sets
// it to nil.
func (d *Binder) Strings(from int, dst *[]string) int {
	it, ok := d.Array(from)
	if !ok {
		if !d.failed {
			*dst = nil
		}
		return d.Skip(from)
	}
	list := (*dst)[:0]
	if list == nil {
		list = []string{}
	}
	for {
		from, ok := it.Next()
		if !ok {
			break
		}
		var s string
		it.At(d.Str(from, &s))
		list = append(list, s)
	}
	*dst = list
	return it.End()
}

// AtEnd reports whether nothing but white space follows i.
func (d *Binder) AtEnd(i int) bool { return d.ws(i) == len(d.data) }
