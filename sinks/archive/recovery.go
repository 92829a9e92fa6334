package archive

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// recovery is the rebuild of one manifest's data object after a crash; the
// redelivered messages it covers wait in held for its upload.
type recovery struct {
	held []bus.AckRef
}

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

// resolveSuspects sorts redelivered messages: already archived → acked;
// claimed by a manifest whose object is missing → rebuilt from the stream;
// unclaimed → returned, to be buffered as new.
func (s *Sink) resolveSuspects(ctx context.Context, suspects []item, slots chan struct{}, wg *sync.WaitGroup) []item {
	byHour := map[time.Time][]item{}
	seen := map[uint64]bool{}
	for _, it := range suspects {
		if seen[it.seq] || s.isHeld(it.seq) {
			continue
		}
		seen[it.seq] = true
		byHour[it.hour] = append(byHour[it.hour], it)
	}
	var fresh []item
	for h, its := range byHour {
		idx, err := s.hourIndex(ctx, h)
		if err != nil {
			s.m.Errors.WithLabelValues("list").Inc()
			s.setErr(err)
			s.log.Warn("archive sink: cannot check redelivered calls against the archive; they come back later",
				"hour", h, "calls", len(its), "err", err)
			for _, it := range its {
				_ = it.msg.NakWithDelay(s.cfg.BackoffMax)
			}
			continue
		}
		for _, it := range its {
			m := idx.find(it.seq)
			switch {
			case m == nil:
				fresh = append(fresh, it)
			case idx.data[m.Key]:
				s.m.Skipped.WithLabelValues("archived").Inc()
				s.ack(it.msg)
			default:
				s.recover(ctx, m, it, slots, wg)
			}
		}
	}
	return fresh
}

// recover attaches it to the rebuild of m's data object, starting one.
func (s *Sink) recover(ctx context.Context, m *rawarchive.Manifest, it item, slots chan struct{}, wg *sync.WaitGroup) {
	s.mu.Lock()
	s.held[it.seq] = struct{}{}
	if r := s.recovering[m.Key]; r != nil {
		r.held = append(r.held, it.ref)
		s.mu.Unlock()
		return
	}
	r := &recovery{held: []bus.AckRef{it.ref}}
	s.recovering[m.Key] = r
	s.mu.Unlock()
	s.log.Warn("archive sink: object claimed by a manifest but not stored (crash mid-upload); rebuilding it from the stream",
		"key", m.Key, "calls", m.Count)
	slots <- struct{}{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { <-slots }()
		built, err := s.rebuild(ctx, m)
		stored := err == nil && s.upload(ctx, built, nil, built.Manifest.Key != m.Key)
		s.mu.Lock()
		delete(s.recovering, m.Key)
		held := r.held
		s.mu.Unlock()
		defer s.release(held)
		if !stored {
			if err != nil {
				s.m.Errors.WithLabelValues("recovery").Inc()
				s.setErr(err)
				s.log.Error("archive sink: rebuilding object failed; its calls come back later", "key", m.Key, "err", err)
			}
			for _, h := range held {
				s.nakHeld(h)
			}
			return
		}
		s.m.Recovered.Inc()
		s.m.Skipped.WithLabelValues("archived").Add(float64(len(held)))
		for _, h := range held {
			s.ackHeld(h)
		}
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
