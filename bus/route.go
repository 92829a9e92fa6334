package bus

import (
	"strings"

	"github.com/nats-io/nats.go"
)

// Replayed and retried messages travel the same streams as live ones, marked
// by headers, so that every stage keeps one code path:
//
//   - raw replayed events are published on ReplaySubjectPrefix.<job>, with
//     HeaderReplay = job id and, when only some sinks should see them,
//     HeaderSinks = "clickhouse,langfuse";
//   - their Nats-Msg-Id is ReplayMsgID(job, id), so the duplicate window of
//     the original event does not swallow the replay, while a replay job that
//     re-sends after a crash is still deduplicated;
//   - normalize copies both headers onto the normalized record (a batch
//     holds calls of one replay job and Callpipe-Sinks only) and uses
//     ReplayMsgID(job, record id) as its Nats-Msg-Id;
//   - each stage acknowledges and skips a message Routed rejects;
//   - a retried dead letter (dlq.go) is a replay addressed to the stage it
//     failed in, so it reaches that stage only.

// ReplayMsgID is the Nats-Msg-Id of call id re-published by replay job.
func ReplayMsgID(job, id string) string { return "replay:" + job + ":" + id }

// IsReplay reports whether a message was published by a replay job (or is a
// retried dead letter).
func IsReplay(h nats.Header) bool { return h != nil && h.Get(HeaderReplay) != "" }

// Routed reports whether stage should process a message with headers h:
//
//   - a live message goes to every stage;
//   - a message whose HeaderSinks lists stages goes to those stages and to
//     the stages upstream of them (normalize feeds the sinks of
//     CALLPIPE_NORMALIZED);
//   - a replay without HeaderSinks goes to every stage except those that
//     take only replays naming them (the archive).
func Routed(h nats.Header, stage string) bool {
	if h == nil {
		return true
	}
	list := h.Get(HeaderSinks)
	if list == "" {
		return !IsReplay(h) || !StageOf(stage).OnlyNamedReplays
	}
	feeds := StageOf(stage).Feeds
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		if name == stage {
			return true
		}
		for _, s := range Stages {
			if s.Name == name && feeds != "" && s.Reads == feeds {
				return true
			}
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
