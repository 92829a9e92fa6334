package bus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A message on CALLPIPE_NORMALIZED carries one call or a batch of calls:
//
//   - one call: the body is one schema.Call JSON object, with no HeaderCalls
//     (the only format before batches; still written for a batch of one, and
//     read by every stage, so old and new workers can run side by side);
//   - a batch: HeaderCalls holds the number of calls and the body holds them
//     as lines, one schema.Call JSON object per line, separated by '\n'
//     (no line break inside a call: normalize compacts a call whose raw
//     values hold one). Its Nats-Msg-Id is BatchMsgID of its call ids.
//
// Every call of a batch has the same subject (kind) and the same replay
// marks (HeaderReplay, HeaderSinks), so that routing (Routed) holds for the
// message as a whole. A stage settles a batch message once every call of it
// is stored or dead-lettered alone (DeadLetters.WriteItem).

// MaxBatchCalls is the most calls normalize puts in one message.
const MaxBatchCalls = 256

// MaxBatchBytes bounds a batched message's body, below the server's default
// max_payload (1 MiB) with room for headers.
const MaxBatchBytes = 512 << 10

// BatchMsgID is the Nats-Msg-Id of a batch of the calls ids: a hash of the
// ids in sorted order, so that the same calls published again (their raw
// events redelivered together) are stored once, in whatever order they came.
func BatchMsgID(ids []string) string {
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	h := sha256.New()
	for _, id := range sorted {
		h.Write([]byte(id))
		h.Write([]byte{0}) // ids never contain NUL bytes (schema: JSON strings without control characters)
	}
	return "calls:" + hex.EncodeToString(h.Sum(nil)[:16])
}

// Items splits a message of CALLPIPE_NORMALIZED into its calls' JSON: one
// item for a message without HeaderCalls, else one per line. The items
// alias data. An error means the message is not a valid batch as a whole
// (its count does not match its lines).
func Items(h nats.Header, data []byte) ([][]byte, error) {
	v := ""
	if h != nil {
		v = h.Get(HeaderCalls)
	}
	if v == "" {
		return [][]byte{data}, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return nil, fmt.Errorf("batch: %s %q is not a positive count", HeaderCalls, v)
	}
	items := make([][]byte, 0, n)
	for line := range bytes.Lines(data) {
		items = append(items, bytes.TrimSuffix(line, []byte{'\n'}))
	}
	if len(items) != n {
		return nil, fmt.Errorf("batch: %s says %d calls, the body holds %d lines", HeaderCalls, n, len(items))
	}
	return items, nil
}

// WriteItem stores call item (0-based) of batched message m, whose JSON is
// data, in CALLPIPE_DLQ with reason, in the one dead-letter format (the
// call's bytes alone, m's source and replay marks), with Nats-Msg-Id
// <stage>:<stream>:<seq>:<item>. m itself is not settled: the caller does
// that once every call of m is stored or dead-lettered, and naks m when
// WriteItem fails.
func (d DeadLetters) WriteItem(ctx context.Context, m jetstream.Msg, item int, data []byte, reason string) error {
	f := FailureOf(d.Stage, m, reason)
	f.Data, f.Item = data, item+1
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := d.JS.PublishMsg(pctx, f.Msg(time.Now()), jetstream.WithExpectStream(DeadLetterStream)); err != nil {
		return fmt.Errorf("%s: dead letter of call %d of a batch to %s: %w", d.Stage, item, DeadLetterStream, err)
	}
	return nil
}
