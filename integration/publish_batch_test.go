package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/internal/nettest"
	"github.com/callpipe/callpipe/schema"
)

func publishBatchEvent(id string) *schema.Event {
	end := time.Now().UTC()
	return &schema.Event{ID: id, StartTime: end.Add(-time.Second), EndTime: &end, Endpoint: "/v1/embeddings", Model: "bge-m3",
		Status: 200, Request: json.RawMessage(`{"input":"hi"}`), Response: json.RawMessage(`{"data":[]}`)}
}

// TestPublishBatchResultsPerEvent: PublishBatch stores each event of a batch
// once and says what became of each: an invalid event fails alone (its
// field named), a second event with an id already stored is a duplicate.
func TestPublishBatchResultsPerEvent(t *testing.T) {
	s := newCallStream(t)
	pub, err := ingest.NewPublisher(s.nc, ingest.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "batch-" + testkit.RandomHex(t, 5)
	evs := make([]*schema.Event, 6)
	for i := range evs {
		evs[i] = publishBatchEvent(fmt.Sprintf("%s-%d", prefix, i))
	}
	evs[2].Model = "" // invalid: model is required
	evs[4] = publishBatchEvent(evs[0].ID)
	res := make([]ingest.PublishResult, len(evs))
	pub.PublishBatch(ctx, evs, res)
	var ve schema.ValidationError
	if !errors.As(res[2].Err, &ve) || ve.Error() == "" {
		t.Fatalf("invalid event: %v, want a validation error", res[2].Err)
	}
	for i, r := range res {
		switch i {
		case 2:
		case 4:
			if r.Err != nil || !r.Duplicate {
				t.Errorf("event %d (id of event 0 again): %+v, want a duplicate", i, r)
			}
		default:
			if r.Err != nil || r.Duplicate {
				t.Errorf("event %d: %+v, want stored", i, r)
			}
		}
	}
	_, counts := s.events(t)
	for i, ev := range evs {
		want := 1
		if i == 2 {
			want = 0
		}
		if counts[ev.ID] != want {
			t.Errorf("event %d (%s) stored %d times, want %d", i, ev.ID, counts[ev.ID], want)
		}
	}
}

// BenchmarkPublishOverASlowLink publishes events to JetStream over a
// connection whose every read waits 1 ms (a NATS server a round trip away),
// one at a time (Publish) and 64 at a time (PublishBatch, as the proxy's
// emitter does), and reports events per second:
//
//	go tool task services:up && . .state/services/env
//	go test -run '^$' -bench PublishOverASlowLink -benchtime 2000x ./integration
func BenchmarkPublishOverASlowLink(b *testing.B) {
	newCallStream(b) // the stream exists
	slow := &atomic.Bool{}
	nc, err := nats.Connect(harness.NATS(b), nats.SetCustomDialer(nettest.SlowDialer{Slow: slow, Delay: time.Millisecond}))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{})
	if err != nil {
		b.Fatal(err)
	}
	slow.Store(true)
	ctx := context.Background()
	prefix := "slowlink-" + testkit.RandomHex(b, 5)
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			evs := make([]*schema.Event, batch)
			res := make([]ingest.PublishResult, batch)
			n := 0
			start := time.Now()
			for b.Loop() {
				for i := range evs {
					n++
					evs[i] = publishBatchEvent(fmt.Sprintf("%s-%d-%d", prefix, batch, n))
				}
				if batch == 1 {
					_, res[0].Err = pub.Publish(ctx, evs[0])
				} else {
					pub.PublishBatch(ctx, evs, res)
				}
				for _, r := range res {
					if r.Err != nil {
						b.Fatal(r.Err)
					}
				}
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
		})
	}
}
