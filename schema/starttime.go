package schema

import "time"

// StartTime returns the start_time of the event in data without decoding the
// rest: it reads top-level keys in order and stops at start_time, so it
// costs a fraction of Decode for callers that only place an event in time
// (the archive sink). ok is false when data is not a JSON object with a valid
// start_time before any syntax error; it does not validate anything else.
func StartTime(data []byte) (t time.Time, ok bool) {
	d := scanner{data: data, overflow: -1}
	d.skipWS()
	if !d.expect('{', "'{'") {
		return t, false
	}
	for d.fatal == nil {
		d.skipWS()
		if d.peek() != '"' {
			return t, false
		}
		key, ok := d.stringBytes()
		if !ok || !d.expect(':', "':'") {
			return t, false
		}
		d.skipWS()
		if string(key) == fieldNames[fStartTime] {
			if d.peek() != '"' {
				return t, false
			}
			t, reason, ok := d.timestampString()
			return t, ok && reason == "" && d.fatal == nil
		}
		d.skipValue(1)
		d.skipWS()
		if !d.expect(',', "','") {
			return t, false
		}
	}
	return t, false
}
