package schema

import (
	"encoding/binary"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// The JSON scanner: validating, single pass, no reflection. Syntax errors
// set d.fatal and stop decoding.

// scanner is the JSON scanner's state: what skipping and checking a value
// needs, and all that the callers that only check or skip values carry
// (DecodeCall's raw values, StartTime); decoder adds an Event's buffers.
type scanner struct {
	data  []byte
	pos   int
	fatal *FieldError // syntax error: stops decoding
	// overflow is the offset of the first number seen by skipValue that
	// overflows float64, or -1. Set to -1 before a skip that cares.
	overflow int
}

func (d *scanner) syntaxError(off int, msg string) {
	if d.fatal == nil {
		d.fatal = &FieldError{Field: EventField, Reason: "invalid JSON at byte offset " + strconv.Itoa(off) + ": " + msg}
	}
}

func (d *scanner) unexpected() {
	if d.pos >= len(d.data) {
		d.syntaxError(d.pos, "unexpected end of input")
		return
	}
	d.syntaxError(d.pos, "invalid character "+quoteChar(d.data[d.pos]))
}

func quoteChar(c byte) string {
	if c < utf8.RuneSelf {
		return strconv.QuoteRune(rune(c))
	}
	return "byte 0x" + strconv.FormatUint(uint64(c), 16)
}

func (d *scanner) skipWS() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next byte, or 0 at the end of input.
func (d *scanner) peek() byte {
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

// expect consumes c after optional whitespace.
func (d *scanner) expect(c byte, what string) bool {
	d.skipWS()
	if d.peek() != c {
		if d.pos >= len(d.data) {
			d.syntaxError(d.pos, "unexpected end of input, expected "+what)
		} else {
			d.syntaxError(d.pos, "invalid character "+quoteChar(d.data[d.pos])+", expected "+what)
		}
		return false
	}
	d.pos++
	return true
}

func (d *scanner) unexpectedKey() {
	if d.pos >= len(d.data) {
		d.syntaxError(d.pos, "unexpected end of input, expected a string key")
	} else {
		d.syntaxError(d.pos, "invalid character "+quoteChar(d.data[d.pos])+", expected a string key")
	}
}

// memberKey scans an object member's key, its ':' and the white space
// before the value. The key aliases data unless it has escapes.
func (d *scanner) memberKey() ([]byte, bool) {
	if d.peek() != '"' {
		d.unexpectedKey()
		return nil, false
	}
	key, ok := d.stringBytes()
	if !ok || !d.expect(':', "':'") {
		return nil, false
	}
	d.skipWS()
	return key, true
}

// next steps over the ',' after a member (close '}') or an element (close
// ']') and reports whether another one follows; after the last one it
// consumes close. ok is false after a syntax error.
func (d *scanner) next(close byte) (more, ok bool) {
	d.skipWS()
	if d.peek() == ',' {
		d.pos++
		d.skipWS()
		return true, true
	}
	want := "',' or '}'"
	if close == ']' {
		want = "',' or ']'"
	}
	return false, d.expect(close, want)
}

func (d *scanner) trailing() {
	d.skipWS()
	if d.pos < len(d.data) {
		d.syntaxError(d.pos, "unexpected data after the top-level value")
	}
}

// strSafe[c] is true for bytes that need no attention inside a string.
var strSafe = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// SWAR constants: the byte 0x01 and 0x80 in every lane of a uint64.
const (
	lanes01 = 0x0101010101010101
	lanes80 = 0x8080808080808080
)

// needsAttention reports whether any of the 8 bytes in x is '"', '\\' or a
// control character (< 0x20). Each term is the exact "has a zero byte" or
// "has a byte less than n" test.
func needsAttention(x uint64) bool {
	q := x ^ (lanes01 * '"')
	bs := x ^ (lanes01 * '\\')
	return ((q-lanes01)&^q|(bs-lanes01)&^bs|(x-lanes01*0x20)&^x)&lanes80 != 0
}

// scanString scans the string starting at d.pos (a '"') and returns the
// bounds of its contents and whether it has escapes.
func (d *scanner) scanString() (start, end int, esc, ok bool) {
	data := d.data
	i := d.pos + 1
	for {
		for i+8 <= len(data) && !needsAttention(binary.LittleEndian.Uint64(data[i:])) {
			i += 8
		}
		for i < len(data) && strSafe[data[i]] {
			i++
		}
		if i >= len(data) {
			d.pos = i
			d.syntaxError(i, "unexpected end of input in string")
			return 0, 0, false, false
		}
		switch c := data[i]; {
		case c == '"':
			start, end = d.pos+1, i
			d.pos = i + 1
			return start, end, esc, true
		case c == '\\':
			esc = true
			if i+1 >= len(data) {
				d.syntaxError(i+1, "unexpected end of input in string escape")
				return 0, 0, false, false
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for j := i + 2; j < i+6; j++ {
					if j >= len(data) {
						d.syntaxError(j, "unexpected end of input in string escape")
						return 0, 0, false, false
					}
					if unhex(data[j]) < 0 {
						d.syntaxError(j, "invalid character "+quoteChar(data[j])+" in \\u escape")
						return 0, 0, false, false
					}
				}
				i += 6
			default:
				d.syntaxError(i+1, "invalid escape character "+quoteChar(data[i+1])+" in string")
				return 0, 0, false, false
			}
		default:
			d.syntaxError(i, "invalid control character "+quoteChar(c)+" in string")
			return 0, 0, false, false
		}
	}
}

func unhex(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		h := unhex(c)
		if h < 0 {
			return -1
		}
		r = r<<4 | h
	}
	return r
}

// appendUnquoted appends the decoded contents of a string already checked
// by scanString, with encoding/json's semantics: a \\u escape of an unpaired
// surrogate becomes U+FFFD.
func appendUnquoted(dst, b []byte) []byte {
	for i := 0; i < len(b); {
		j := i
		for j < len(b) && b[j] != '\\' {
			j++
		}
		dst = append(dst, b[i:j]...)
		if j >= len(b) {
			break
		}
		i = j + 2
		switch b[j+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(b[j+2:])
			i = j + 6
			if utf16.IsSurrogate(r) {
				if i+6 <= len(b) && b[i] == '\\' && b[i+1] == 'u' {
					if dec := utf16.DecodeRune(r, hex4(b[i+2:])); dec != utf8.RuneError {
						r = dec
						i += 6
					} else {
						r = utf8.RuneError
					}
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, b[j+1])
		}
	}
	return dst
}

// scanNumber scans a JSON number at d.pos.
func (d *scanner) scanNumber() bool {
	data := d.data
	i := d.pos
	if i < len(data) && data[i] == '-' {
		i++
	}
	digits := func() bool {
		j := i
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		return i > j
	}
	switch {
	case i >= len(data):
		d.syntaxError(i, "unexpected end of input in number")
		return false
	case data[i] == '0':
		i++
	case data[i] >= '1' && data[i] <= '9':
		digits()
	default:
		d.syntaxError(i, "invalid character "+quoteChar(data[i])+" in number")
		return false
	}
	if i < len(data) && data[i] == '.' {
		i++
		if !digits() {
			d.pos = i
			d.unexpected()
			return false
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if !digits() {
			d.pos = i
			d.unexpected()
			return false
		}
	}
	d.pos = i
	return true
}

// skipValue scans any JSON value at d.pos and returns its JSON Schema type
// name ("object", "array", "string", "number", "boolean", "null"). It
// records the first number that overflows float64 in d.overflow.
//
// depth is the number of containers around the value.
func (d *scanner) skipValue(depth int) string {
	c := d.peek()
	if (c == '{' || c == '[') && depth >= maxDepth {
		d.syntaxError(d.pos, "exceeded max nesting depth")
		return ""
	}
	switch c {
	case '{':
		d.pos++
		d.skipWS()
		if d.peek() == '}' {
			d.pos++
			return "object"
		}
		for {
			if d.peek() != '"' {
				d.unexpectedKey()
				return ""
			}
			if _, _, _, ok := d.scanString(); !ok || !d.expect(':', "':'") {
				return ""
			}
			d.skipWS()
			if d.skipValue(depth + 1); d.fatal != nil {
				return ""
			}
			if more, ok := d.next('}'); !ok {
				return ""
			} else if !more {
				return "object"
			}
		}
	case '[':
		d.pos++
		d.skipWS()
		if d.peek() == ']' {
			d.pos++
			return "array"
		}
		for {
			if d.skipValue(depth + 1); d.fatal != nil {
				return ""
			}
			if more, ok := d.next(']'); !ok {
				return ""
			} else if !more {
				return "array"
			}
		}
	case '"':
		d.scanString()
		return "string"
	case 't':
		return d.literal("true", "boolean")
	case 'f':
		return d.literal("false", "boolean")
	case 'n':
		return d.literal("null", "null")
	default:
		if c == '-' || (c >= '0' && c <= '9') {
			start := d.pos
			if !d.scanNumber() {
				return ""
			}
			if d.overflow < 0 && overflows(d.data[start:d.pos]) {
				d.overflow = start
			}
			return "number"
		}
		d.unexpected()
		return ""
	}
}

func (d *scanner) literal(lit, kind string) string {
	n := len(lit)
	if len(d.data)-d.pos >= n && string(d.data[d.pos:d.pos+n]) == lit {
		d.pos += n
		return kind
	}
	for i := 0; i < n; i++ { // point at the first wrong byte
		if d.pos+i >= len(d.data) || d.data[d.pos+i] != lit[i] {
			d.pos += i
			break
		}
	}
	d.unexpected()
	return ""
}

// overflows reports whether a JSON number literal is beyond ±MaxFloat64.
func overflows(lit []byte) bool {
	if len(lit) < 300 {
		exp := false
		for _, c := range lit {
			if c == 'e' || c == 'E' {
				exp = true
				break
			}
		}
		if !exp {
			return false // fewer than 300 digits: below 1e300
		}
	}
	_, err := strconv.ParseFloat(string(lit), 64)
	return err != nil
}

type intStatus int

const (
	intOK       intStatus = iota
	intFraction           // not an integer
	intRange              // integral, but outside int64
)

// parseInt returns the exact integer value of a syntactically valid JSON
// number literal, in any notation (12, 12.0, 1.2e1, 120e-1).
func parseInt(lit []byte) (int64, intStatus) {
	i := 0
	neg := lit[0] == '-'
	if neg {
		i++
	}
	// Fast path: plain integers.
	if n := len(lit) - i; n > 0 && n <= 18 {
		var v int64
		plain := true
		for _, c := range lit[i:] {
			if c < '0' || c > '9' {
				plain = false
				break
			}
			v = v*10 + int64(c-'0')
		}
		if plain {
			if neg {
				v = -v
			}
			return v, intOK
		}
	}
	// Split into integer digits, fraction digits and exponent.
	intStart := i
	for i < len(lit) && lit[i] >= '0' && lit[i] <= '9' {
		i++
	}
	intDigits := lit[intStart:i]
	var frac []byte
	if i < len(lit) && lit[i] == '.' {
		i++
		fs := i
		for i < len(lit) && lit[i] >= '0' && lit[i] <= '9' {
			i++
		}
		frac = lit[fs:i]
	}
	exp, expHuge := 0, 0
	if i < len(lit) && (lit[i] == 'e' || lit[i] == 'E') {
		i++
		sign := 1
		if lit[i] == '+' || lit[i] == '-' {
			if lit[i] == '-' {
				sign = -1
			}
			i++
		}
		for ; i < len(lit); i++ {
			if exp < 1e6 {
				exp = exp*10 + int(lit[i]-'0')
			} else {
				expHuge = sign
			}
		}
		exp *= sign
	}
	digit := func(k int) byte { // k-th digit of intDigits ++ frac
		if k < len(intDigits) {
			return intDigits[k]
		}
		return frac[k-len(intDigits)]
	}
	total := len(intDigits) + len(frac)
	first, last := -1, -1
	for k := 0; k < total; k++ {
		if digit(k) != '0' {
			if first < 0 {
				first = k
			}
			last = k
		}
	}
	if first < 0 {
		return 0, intOK // zero in any notation
	}
	switch {
	case expHuge > 0:
		return 0, intRange
	case expHuge < 0:
		return 0, intFraction
	}
	// value = digits[first..last] * 10^scale
	scale := exp - len(frac) + (total - 1 - last)
	if scale < 0 {
		return 0, intFraction
	}
	if last-first+1+scale > 19 {
		return 0, intRange
	}
	var u uint64
	for k := first; k <= last; k++ {
		u = u*10 + uint64(digit(k)-'0')
	}
	for ; scale > 0; scale-- {
		u *= 10
	}
	if u > 1<<63-1 {
		return 0, intRange
	}
	if neg {
		return -int64(u), intOK
	}
	return int64(u), intOK
}
