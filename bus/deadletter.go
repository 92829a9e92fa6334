package bus

import (
	"context"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// maxReasonBytes bounds the Callpipe-Error header: a reason quoting a whole
// payload must not make the dead letter exceed the server's max payload.
const maxReasonBytes = 2048

// Failure is a message a stage gives up on, and why.
type Failure struct {
	Stage    string
	Stream   string // the stream it was read from
	Subject  string
	Seq      uint64 // its stream sequence; 0 when unknown
	Attempts uint64 // deliveries to the stage (counted as 1 when unknown)
	// Header is the message's own: its replay marks route a retry, and the
	// failure headers of a retried dead letter carry over.
	Header nats.Header
	Data   []byte
	Reason string
	// Item is 1 + the index of the failed call in a batched message
	// (batch.go), whose Data is that call alone; 0 for a whole message.
	Item int
}

// FailureOf describes m, read by stage, failing for reason.
func FailureOf(stage string, m jetstream.Msg, reason string) Failure {
	f := Failure{Stage: stage, Subject: m.Subject(), Header: m.Headers(), Data: m.Data(), Reason: reason}
	if md, err := m.Metadata(); err == nil {
		f.Stream, f.Seq, f.Attempts = md.Stream, md.Sequence.Stream, md.NumDelivered
	}
	return f
}

// Msg is the dead letter of f, failed at now: the original bytes on
// DeadLetterSubjectPrefix.<stage>, with the headers
//
//	Callpipe-Error           the reason (line breaks replaced, at most 2 KiB)
//	Callpipe-Stage           the stage that gave up
//	Callpipe-Source-Stream   where the message was read
//	Callpipe-Source-Subject  its subject (where `dlq retry` sends it back)
//	Callpipe-Source-Seq      its stream sequence, when known
//	Callpipe-Attempts        deliveries to the stage, over every retry
//	Callpipe-First-Failure   RFC 3339 time of the first dead letter of it
//	Callpipe-Replay, -Sinks  its replay marks, when it had any
//	Nats-Msg-Id              <stage>:<stream>:<seq>, or <stage>:<stream>:<seq>:<item>
//	                         for one call of a batched message (item from 0)
//
// The Nats-Msg-Id makes a dead letter written twice (a crash before the
// message was settled, a dead letter retried on a later delivery) stored once.
func (f Failure) Msg(now time.Time) *nats.Msg {
	m := &nats.Msg{Subject: DeadLetterSubjectPrefix + "." + f.Stage, Data: f.Data, Header: make(nats.Header, 10)}
	m.Header.Set(HeaderError, sanitize(f.Reason))
	m.Header.Set(HeaderStage, f.Stage)
	m.Header.Set(HeaderSourceStream, f.Stream)
	m.Header.Set(HeaderSourceSubject, f.Subject)
	if f.Seq > 0 {
		seq := strconv.FormatUint(f.Seq, 10)
		m.Header.Set(HeaderSourceSeq, seq)
		id := f.Stage + ":" + f.Stream + ":" + seq
		if f.Item > 0 {
			id += ":" + strconv.Itoa(f.Item-1)
		}
		m.Header.Set(HeaderMsgID, id)
	}
	attempts := max(f.Attempts, 1)
	first := now.UTC().Format(time.RFC3339Nano)
	if f.Header != nil {
		prior, _ := strconv.ParseUint(f.Header.Get(HeaderAttempts), 10, 64)
		attempts += prior
		if t := f.Header.Get(HeaderFirstFailure); t != "" {
			first = t
		}
	}
	m.Header.Set(HeaderAttempts, strconv.FormatUint(attempts, 10))
	m.Header.Set(HeaderFirstFailure, first)
	CopyReplayHeaders(m.Header, f.Header)
	return m
}

// sanitize makes reason a header value: one line, at most maxReasonBytes,
// cut on a rune boundary.
func sanitize(reason string) string {
	b := []byte(reason)
	if len(b) > maxReasonBytes {
		b = b[:maxReasonBytes]
		for len(b) > 0 && !utf8.Valid(b) {
			b = b[:len(b)-1]
		}
	}
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

// DeadLetters is a stage's dead-letter writer.
type DeadLetters struct {
	JS    jetstream.JetStream
	Stage string
}

// Write stores m in CALLPIPE_DLQ with reason, then terminates m so that
// JetStream never delivers it again. When the DLQ does not take it the
// error is returned and m is left to the caller, which naks it with its
// own delay: a message is never settled before its dead letter is stored.
func (d DeadLetters) Write(ctx context.Context, m jetstream.Msg, reason string) error {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := d.JS.PublishMsg(pctx, FailureOf(d.Stage, m, reason).Msg(time.Now()), jetstream.WithExpectStream(DeadLetterStream)); err != nil {
		return fmt.Errorf("%s: dead letter to %s: %w", d.Stage, DeadLetterStream, err)
	}
	// A failed Term only means a redelivery, whose dead letter the DLQ drops
	// as a duplicate (same Nats-Msg-Id).
	_ = m.Term()
	return nil
}
