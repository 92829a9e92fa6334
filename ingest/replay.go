package ingest

import (
	"strings"

	"github.com/nats-io/nats.go"
)

// Replayed calls travel the same streams as live ones, marked by headers, so
// that every stage keeps one code path:
//
//   - raw replayed events are published on ReplaySubjectPrefix (callpipe.calls.replay.<job>),
//     with HeaderReplay = job id and, when only some sinks should see them,
//     HeaderSinks = "clickhouse,langfuse";
//   - their Nats-Msg-Id is ReplayMsgID(job, id), so the duplicate window of
//     the original event does not swallow the replay, while a replay job that
//     re-sends after a crash is still deduplicated;
//   - normalize copies both headers onto the normalized record and uses the
//     same ReplayMsgID as its Nats-Msg-Id;
//   - each sink acknowledges and skips a record that SinkSelected rejects;
//   - the archive sink never archives a replayed event (it skips HeaderReplay).
const (
	HeaderReplay = "Callpipe-Replay"
	HeaderSinks  = "Callpipe-Sinks"

	ReplaySubjectPrefix = CallsSubjectPrefix + ".replay"
)

// ReplayMsgID is the Nats-Msg-Id of call id re-published by replay job.
func ReplayMsgID(job, id string) string { return "replay:" + job + ":" + id }

// IsReplay reports whether a message was published by a replay job.
func IsReplay(h nats.Header) bool { return h != nil && h.Get(HeaderReplay) != "" }

// SinkSelected reports whether the sink named sink should process a message
// with headers h: live messages go to every sink, replayed ones to the sinks
// their HeaderSinks lists (all sinks when the header is absent or empty).
func SinkSelected(h nats.Header, sink string) bool {
	if h == nil {
		return true
	}
	list := h.Get(HeaderSinks)
	if list == "" {
		return true
	}
	for name := range strings.SplitSeq(list, ",") {
		if strings.TrimSpace(name) == sink {
			return true
		}
	}
	return false
}

// CopyReplayHeaders carries the replay marks of a raw message onto the message
// derived from it.
func CopyReplayHeaders(dst, src nats.Header) {
	if src == nil {
		return
	}
	for _, k := range []string{HeaderReplay, HeaderSinks} {
		if v := src.Get(k); v != "" {
			dst.Set(k, v)
		}
	}
}
