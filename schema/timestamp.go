package schema

import (
	"strconv"
	"sync/atomic"
	"time"
)

// Timestamps are RFC 3339 date-times (the JSON Schema "date-time" format):
//
//	YYYY-MM-DD "T" hh:mm:ss [ "." 1*DIGIT ] ( "Z" / ("+" / "-") hh:mm )
//
// "T" and "Z" may be lower case, as RFC 3339 allows. The offset is required.
// Fractions beyond nanoseconds are truncated. A leap second (ss = 60) is
// accepted only at 23:59 UTC, as the JSON Schema format requires, and — Go's
// time.Time having no leap seconds — becomes the first instant of the next
// minute. An offset of zero ("Z", "+00:00", "-00:00") decodes to time.UTC;
// any other offset to a fixed zone, so the offset is kept through
// re-marshalling.

const timestampExample = "2024-05-01T12:00:00.123Z"

// parseTimestamp parses s; on failure it returns a reason for a FieldError.
func parseTimestamp[S string | []byte](s S) (time.Time, string) {
	bad := func(what string) (time.Time, string) {
		return time.Time{}, what + ", got " + quoteTrunc(string(s))
	}
	const syntax = "must be an RFC 3339 timestamp with offset, e.g. " + timestampExample
	if len(s) < len("2006-01-02T15:04:05") {
		return bad(syntax)
	}
	digits := func(i, n int) (int, bool) {
		v := 0
		for j := i; j < i+n; j++ {
			c := s[j]
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	year, ok1 := digits(0, 4)
	month, ok2 := digits(5, 2)
	day, ok3 := digits(8, 2)
	hour, ok4 := digits(11, 2)
	minute, ok5 := digits(14, 2)
	sec, ok6 := digits(17, 2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) ||
		s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' || s[16] != ':' {
		return bad(syntax)
	}
	rest := s[19:]
	nsec := 0
	if len(rest) > 0 && rest[0] == '.' {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			if i <= 9 {
				nsec = nsec*10 + int(rest[i]-'0')
			}
			i++
		}
		if i == 1 {
			return bad(syntax)
		}
		for n := i; n <= 9; n++ {
			nsec *= 10
		}
		rest = rest[i:]
	}
	offset := 0 // seconds east of UTC
	switch {
	case len(rest) == 1 && (rest[0] == 'Z' || rest[0] == 'z'):
	case len(rest) == 0:
		return bad("missing UTC offset (Z or ±hh:mm)")
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		oh, okh := digits(len(s)-5, 2)
		om, okm := digits(len(s)-2, 2)
		if !okh || !okm {
			return bad(syntax)
		}
		if oh > 23 || om > 59 {
			return bad("UTC offset out of range")
		}
		offset = (oh*60 + om) * 60
		if rest[0] == '-' {
			offset = -offset
		}
	default:
		return bad(syntax)
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) {
		return bad("invalid date")
	}
	if hour > 23 || minute > 59 || sec > 60 {
		return bad("invalid time of day")
	}
	if sec == 60 {
		// Leap second: only at 23:59 UTC.
		m := (hour*60 + minute - offset/60 + 24*60) % (24 * 60)
		if m != 23*60+59 {
			return bad("invalid leap second")
		}
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, zoneFor(offset))
	if t.Year() > 9999 { // 9999-12-31T23:59:60Z
		return bad("year outside 0000-9999")
	}
	if t.IsZero() {
		// The zero time.Time means "absent" in Event.
		return bad("is the zero time, which means absent")
	}
	return t, ""
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// zones caches one fixed zone per offset in minutes (±23:59), so decoding
// does not allocate a *time.Location per timestamp.
var zones [2*(24*60-1) + 1]atomic.Pointer[time.Location]

func zoneFor(offset int) *time.Location {
	if offset == 0 {
		return time.UTC
	}
	i := offset/60 + 24*60 - 1
	if loc := zones[i].Load(); loc != nil {
		return loc
	}
	loc := time.FixedZone("", offset)
	zones[i].Store(loc)
	return loc
}

// checkTime reports why a time.Time built by a Go producer does not survive
// encoding as an RFC 3339 timestamp, or "".
func checkTime(t time.Time) string {
	if y := t.Year(); y < 0 || y > 9999 {
		return "year " + strconv.Itoa(y) + " outside 0000-9999"
	}
	_, off := t.Zone()
	if off%60 != 0 || off <= -24*3600 || off >= 24*3600 {
		return "UTC offset " + strconv.Itoa(off) + "s is not whole minutes within ±23:59"
	}
	return ""
}

// quoteTrunc quotes s for an error message, cut to a readable length.
func quoteTrunc(s string) string {
	const max = 64
	if len(s) > max {
		cut := max
		for cut > 0 && s[cut]&0xC0 == 0x80 { // don't split a UTF-8 sequence
			cut--
		}
		return strconv.Quote(s[:cut]) + "…"
	}
	return strconv.Quote(s)
}

// timestampString scans the string at d.pos (a '"') and parses it as an
// RFC 3339 timestamp; reason says why it is not one. ok is false after a
// syntax error.
func (d *scanner) timestampString() (t time.Time, reason string, ok bool) {
	s, ok := d.stringBytes()
	if !ok {
		return t, "", false
	}
	t, reason = parseTimestamp(s)
	return t, reason, true
}
