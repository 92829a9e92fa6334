package langfuse

import "github.com/callpipe/callpipe/schema"

// AppendSpan exposes appendSpan to the external tests.
var AppendSpan = appendSpan

// CallEvents is what the ingestion encoder writes for c: its two events
// and their envelope ids and types.
func CallEvents(c *schema.Call, o MapOptions) (raw [2][]byte, ids, types [2]string) {
	var e callEvents
	e.reset(c, &o)
	for k := range 2 {
		raw[k] = e.append(nil, k)
		ids[k], types[k] = e.id(k), e.typ(k)
	}
	return raw, ids, types
}
