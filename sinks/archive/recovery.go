package archive

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/sinks"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// hourIndex is what the archive holds for one hour: the manifests and which
// of them have their data object.
type hourIndex struct {
	manifests []*rawarchive.Manifest
	data      map[string]bool
}

// find returns the manifest claiming seq, preferring one whose data object
// exists (a rebuilt object that lost expired messages has a second manifest).
func (x *hourIndex) find(seq uint64) *rawarchive.Manifest {
	var claimed *rawarchive.Manifest
	for _, m := range x.manifests {
		if seq < m.FirstSeq || seq > m.LastSeq || !m.Contains(seq) {
			continue
		}
		if x.data[m.Key] {
			return m
		}
		claimed = m
	}
	return claimed
}

func (s *Sink) hourIndex(ctx context.Context, h time.Time) (*hourIndex, error) {
	data, mkeys, err := rawarchive.HourKeys(ctx, s.s3, s.cfg.Bucket, s.cfg.Prefix, h)
	if err != nil {
		return nil, err
	}
	x := &hourIndex{data: data}
	if len(s.manifests) > 4096 {
		clear(s.manifests)
	}
	for _, k := range mkeys {
		m := s.manifests[k]
		if m == nil {
			var err error
			if m, err = rawarchive.GetManifest(ctx, s.s3, s.cfg.Bucket, k); err != nil {
				return nil, err
			}
			s.manifests[k] = m
		}
		x.manifests = append(x.manifests, m)
	}
	return x, nil
}

// resolveSuspects sorts the redelivered values suspects of b: already
// archived → written (acked); claimed by a manifest whose object is missing
// → held for the rebuild of that object from the stream; unclaimed →
// buffered as new. When an hour cannot be looked up its values are retried
// and the error returned (s.bmu held).
func (s *Sink) resolveSuspects(ctx context.Context, b *sinks.Batch[item], suspects []int) error {
	byHour := map[time.Time][]int{}
	for _, i := range suspects {
		h := b.Items[i].Value.hour
		byHour[h] = append(byHour[h], i)
	}
	var lookupErr error
	for h, its := range byHour {
		idx, err := s.hourIndex(ctx, h)
		if err != nil {
			s.m.Errors.WithLabelValues("list").Inc()
			s.setErr(err)
			s.log.Warn("archive sink: cannot check redelivered calls against the archive; they come back later",
				"hour", h, "calls", len(its), "err", err)
			for _, i := range its {
				b.Retry(i)
			}
			lookupErr = err
			continue
		}
		for _, i := range its {
			m := idx.find(b.Items[i].Value.seq)
			switch {
			case m == nil:
				s.add(ctx, b, i)
			case idx.data[m.Key]:
				s.m.Skipped.WithLabelValues("archived").Inc()
				b.Written(i)
			default:
				s.recover(ctx, m, b.Hold(i))
			}
		}
	}
	if lookupErr != nil {
		return fmt.Errorf("archive sink: looking up redelivered calls: %w", lookupErr)
	}
	return nil
}

// recover attaches h to the rebuild of m's data object, starting one.
func (s *Sink) recover(ctx context.Context, m *rawarchive.Manifest, h sinks.Hold) {
	s.mu.Lock()
	holds, running := s.recovering[m.Key]
	s.recovering[m.Key] = append(holds, h)
	s.mu.Unlock()
	if running {
		return
	}
	s.log.Warn("archive sink: object claimed by a manifest but not stored (crash mid-upload); rebuilding it from the stream",
		"key", m.Key, "calls", m.Count)
	s.slots <- struct{}{}
	go func() {
		defer func() { <-s.slots }()
		built, err := s.rebuild(ctx, m)
		stored := err == nil && s.upload(ctx, built, nil, built.Manifest.Key != m.Key)
		s.mu.Lock()
		holds := s.recovering[m.Key]
		delete(s.recovering, m.Key)
		s.mu.Unlock()
		if !stored {
			if err != nil {
				s.m.Errors.WithLabelValues("recovery").Inc()
				s.setErr(err)
				s.log.Error("archive sink: rebuilding object failed; its calls come back later", "key", m.Key, "err", err)
			}
			sinks.Release(holds, false)
			return
		}
		s.m.Recovered.Inc()
		s.m.Skipped.WithLabelValues("archived").Add(float64(len(holds)))
		sinks.Release(holds, true)
	}()
}

// rebuild reads m's messages from the stream in line order and builds the
// same object again (same key, same bytes, same metadata). Messages the
// stream no longer holds (expired) are left out, which changes the key; the
// caller then writes a new manifest for it.
func (s *Sink) rebuild(ctx context.Context, m *rawarchive.Manifest) (*rawarchive.Built, error) {
	stream, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("archive recovery: stream %s: %w", s.cfg.Stream, err)
	}
	b, err := rawarchive.NewBuilder(s.cfg.Prefix, s.cfg.Stream, s.cfg.Compression, m.Hour, m.Opened)
	if err != nil {
		return nil, err
	}
	missing := 0
	for _, seq := range m.Sequences() {
		raw, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			missing++
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("archive recovery of %s: get sequence %d: %w", m.Key, seq, err)
		}
		line, err := rawarchive.StorableLine(raw.Data)
		if err != nil {
			return nil, fmt.Errorf("archive recovery of %s: sequence %d: %w", m.Key, seq, err)
		}
		_, start := s.placement(line, raw.Time)
		if err := b.Add(seq, line, start); err != nil {
			return nil, err
		}
	}
	if missing == len(m.Sequences()) {
		return nil, fmt.Errorf("archive recovery of %s: none of its %d messages is still in %s", m.Key, m.Count, s.cfg.Stream)
	}
	built, err := b.Finish(m.Flush, m.Closed)
	if err != nil {
		return nil, err
	}
	if missing > 0 {
		s.log.Error("archive recovery: messages expired from the stream before their object was stored; they are lost",
			"key", m.Key, "missing", missing)
	} else if built.Manifest.SHA256 != m.SHA256 {
		return nil, fmt.Errorf("archive recovery of %s: rebuilt content differs from its manifest (sha256 %s, want %s)",
			m.Key, built.Manifest.SHA256, m.SHA256)
	}
	return built, nil
}
