package bus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/callpipe/callpipe/internal/textout"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetter is one message of CALLPIPE_DLQ, as Failure.Msg wrote it.
type DeadLetter struct {
	Seq           uint64    `json:"seq"`
	Time          time.Time `json:"time"`
	Stage         string    `json:"stage"`
	Error         string    `json:"error"`
	SourceStream  string    `json:"source_stream,omitempty"`
	SourceSubject string    `json:"source_subject"`
	SourceSeq     uint64    `json:"source_seq,omitempty"`
	Attempts      uint64    `json:"attempts,omitempty"`
	FirstFailure  time.Time `json:"first_failure,omitzero"`
	Replay        string    `json:"replay,omitempty"`
	Sinks         string    `json:"sinks,omitempty"`
	Data          []byte    `json:"-"`
	header        nats.Header
}

func deadLetterOf(m *jetstream.RawStreamMsg) DeadLetter {
	d := DeadLetter{Seq: m.Sequence, Time: m.Time, Data: m.Data, header: m.Header}
	if h := m.Header; h != nil {
		d.Stage = h.Get(HeaderStage)
		d.Error = h.Get(HeaderError)
		d.SourceStream = h.Get(HeaderSourceStream)
		d.SourceSubject = h.Get(HeaderSourceSubject)
		d.SourceSeq, _ = strconv.ParseUint(h.Get(HeaderSourceSeq), 10, 64)
		d.Attempts, _ = strconv.ParseUint(h.Get(HeaderAttempts), 10, 64)
		if d.Attempts == 0 {
			d.Attempts, _ = strconv.ParseUint(h.Get(headerDeliveriesV0), 10, 64)
		}
		d.FirstFailure, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderFirstFailure))
		d.Replay, d.Sinks = h.Get(HeaderReplay), h.Get(HeaderSinks)
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

// RetryMsg is what `dlq retry` publishes for d: its original bytes on the
// subject it came from, routed (route.go) to the stage it failed in only:
//
//   - a sink's dead letter is a replay whose Callpipe-Sinks names that sink,
//     so the other sinks of its stream skip it (and normalize an archive
//     dead letter);
//   - normalize's dead letter keeps the Callpipe-Sinks it had (all sinks
//     when none): normalize feeds every sink it names, while the archive,
//     which stored the event already, skips it as a replay.
//
// Its Callpipe-Replay is the original replay job, else "dlq-<seq>"; its
// Nats-Msg-Id is "retry:<seq>", so a retry repeated after a crash is stored
// once, while the original id (maybe still in the duplicate window) does not
// make JetStream drop it. Its Callpipe-Attempts and Callpipe-First-Failure
// carry over into the next dead letter, if it fails again.
func (d DeadLetter) RetryMsg() (*nats.Msg, error) {
	if d.SourceSubject == "" {
		return nil, fmt.Errorf("dead letter %d: no %s header (written before callpipe recorded it); cannot tell where it came from", d.Seq, HeaderSourceSubject)
	}
	stage, ok := lookupStage(d.Stage)
	if !ok {
		return nil, fmt.Errorf("dead letter %d: unknown stage %q in %s", d.Seq, d.Stage, HeaderStage)
	}
	seq := strconv.FormatUint(d.Seq, 10)
	m := &nats.Msg{Subject: d.SourceSubject, Data: d.Data, Header: make(nats.Header, 5)}
	m.Header.Set(HeaderMsgID, "retry:"+seq)
	replay := d.Replay
	if replay == "" {
		replay = "dlq-" + seq
	}
	m.Header.Set(HeaderReplay, replay)
	sinks := d.Stage
	if stage.Feeds != "" {
		sinks = d.Sinks
	}
	if sinks != "" {
		m.Header.Set(HeaderSinks, sinks)
	}
	for _, k := range []string{HeaderAttempts, HeaderFirstFailure} {
		if v := d.header.Get(k); v != "" {
			m.Header.Set(k, v)
		}
	}
	return m, nil
}

// RetryDeadLetter publishes dead letter seq's RetryMsg and then deletes it
// from the DLQ.
func RetryDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (DeadLetter, error) {
	d, err := GetDeadLetter(ctx, js, seq)
	if err != nil {
		return d, err
	}
	m, err := d.RetryMsg()
	if err != nil {
		return d, err
	}
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

// PrintDeadLetters writes dls as a table (`dlq ls`) or, asJSON, one JSON
// object per line.
func PrintDeadLetters(w io.Writer, dls []DeadLetter, asJSON bool) error {
	if asJSON {
		return textout.JSONLines(w, dls)
	}
	tw := textout.Table(w, "SEQ\tTIME\tSTAGE\tSOURCE\tATTEMPTS\tERROR")
	for _, d := range dls {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s#%d\t%d\t%s\n", d.Seq, d.Time.UTC().Format(time.RFC3339), d.Stage,
			d.SourceSubject, d.SourceSeq, d.Attempts, d.Error)
	}
	return tw.Flush()
}

// PrintDeadLetter writes d's headers and original bytes (`dlq show`).
func PrintDeadLetter(w io.Writer, d DeadLetter) error {
	fmt.Fprintf(w, "seq: %d\ntime: %s\nstage: %s\nsource: %s#%d\n", d.Seq, d.Time.UTC().Format(time.RFC3339Nano),
		d.Stage, d.SourceSubject, d.SourceSeq)
	if d.SourceStream != "" {
		fmt.Fprintf(w, "source stream: %s\n", d.SourceStream)
	}
	if d.Attempts > 0 {
		fmt.Fprintf(w, "attempts: %d\n", d.Attempts)
	}
	if !d.FirstFailure.IsZero() {
		fmt.Fprintf(w, "first failure: %s\n", d.FirstFailure.UTC().Format(time.RFC3339Nano))
	}
	if d.Replay != "" {
		fmt.Fprintf(w, "replay: %s (sinks: %s)\n", d.Replay, cmp.Or(d.Sinks, "all"))
	}
	_, err := fmt.Fprintf(w, "error: %s\n\n%s\n", d.Error, d.Data)
	return err
}
