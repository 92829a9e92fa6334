package transform

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetter is one message of CALLPIPE_DLQ.
type DeadLetter struct {
	Seq           uint64    `json:"seq"`
	Time          time.Time `json:"time"`
	Stage         string    `json:"stage"`
	Error         string    `json:"error"`
	SourceSubject string    `json:"source_subject"`
	SourceSeq     uint64    `json:"source_seq,omitempty"`
	Deliveries    uint64    `json:"deliveries,omitempty"`
	Data          []byte    `json:"-"`
}

func deadLetterOf(m *jetstream.RawStreamMsg) DeadLetter {
	d := DeadLetter{Seq: m.Sequence, Time: m.Time, Data: m.Data}
	if m.Header != nil {
		d.Stage = m.Header.Get(HeaderStage)
		d.Error = m.Header.Get(HeaderError)
		d.SourceSubject = m.Header.Get(HeaderSourceSubject)
		d.SourceSeq, _ = strconv.ParseUint(m.Header.Get(HeaderSourceSeq), 10, 64)
		d.Deliveries, _ = strconv.ParseUint(m.Header.Get(HeaderDeliveries), 10, 64)
	}
	return d
}

// ListDeadLetters returns up to limit dead letters from sequence from on
// (limit <= 0: all).
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, from uint64, limit int) ([]DeadLetter, error) {
	s, err := js.Stream(ctx, DeadLetterStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", DeadLetterStream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", DeadLetterStream, err)
	}
	if from < info.State.FirstSeq {
		from = info.State.FirstSeq
	}
	var out []DeadLetter
	for seq := from; seq <= info.State.LastSeq && (limit <= 0 || len(out) < limit); seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted (retried)
		}
		if err != nil {
			return nil, fmt.Errorf("dead letter %d: %w", seq, err)
		}
		out = append(out, deadLetterOf(m))
	}
	return out, nil
}

// GetDeadLetter returns the dead letter with sequence seq.
func GetDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (DeadLetter, error) {
	s, err := js.Stream(ctx, DeadLetterStream)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("stream %s: %w", DeadLetterStream, err)
	}
	m, err := s.GetMsg(ctx, seq)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return deadLetterOf(m), nil
}

// RetryDeadLetter re-publishes dead letter seq to the subject it came from
// and then deletes it from the DLQ. The republished event carries the
// Nats-Msg-Id "retry:<dlq seq>", so a retry repeated after a crash is
// stored once, while the original id (still in the duplicate window) does not
// make JetStream drop it.
func RetryDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (DeadLetter, error) {
	d, err := GetDeadLetter(ctx, js, seq)
	if err != nil {
		return d, err
	}
	if d.SourceSubject == "" {
		return d, fmt.Errorf("dead letter %d: no %s header", seq, HeaderSourceSubject)
	}
	m := &nats.Msg{Subject: d.SourceSubject, Data: d.Data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, "retry:"+strconv.FormatUint(seq, 10))
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return d, fmt.Errorf("republish dead letter %d to %s: %w", seq, d.SourceSubject, err)
	}
	s, err := js.Stream(ctx, DeadLetterStream)
	if err != nil {
		return d, fmt.Errorf("stream %s: %w", DeadLetterStream, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return d, fmt.Errorf("delete dead letter %d after retry: %w", seq, err)
	}
	return d, nil
}
