// Package capture is callpipe's capture policy: what of a call's payload is
// kept (full, truncated or none, by model and by user pattern) and which
// strings are masked. It is declared once, here, and applied at two places
// that must agree:
//
//   - at the edge (the proxy, the collector and ingest.Publisher), to the
//     raw event before it is published or spooled (Policy.Event), so that
//     CALLPIPE_CALLS, the archive, dead letters, replay, exports and every
//     sink hold the redacted call only;
//   - in normalize, to the normalized call (Policy.Call), for events from
//     publishers that apply no policy.
//
// Invariants:
//
//   - Applying a policy twice gives the same result as applying it once
//     (Event and Call are each idempotent). The edge works on the strings of
//     the request and response, normalize on the texts it extracts from
//     them; so over an event the edge redacted, normalize's pass under the
//     same configuration changes only what joins strings: truncated mode
//     also cuts a call's joined input or output text to MaxChars, and a mask
//     may match across two messages joined into one text.
//   - Every redacted event and call records the policy that produced it
//     (schema.Capture: mode and mask-set version). A producer's own capture
//     record is replaced, never trusted.
//   - Redaction keeps exact usage: when the edge's pass changes a request
//     or response (mode none or truncated, a mask), the event's tokens are
//     first taken from the reported usage or counted on the whole text
//     (Options.Count, the tokenizer normalize uses), and carried in the
//     event's usage (Capture.Counted when counted).
//   - Masks replace what they match by Mask in request, response, error and
//     metadata (inputs and outputs, error and metadata of a call), keeping
//     JSON values valid.
package capture
