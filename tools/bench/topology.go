package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
)

// rawTopology measures the pipeline's JetStream traffic with no work in it,
// in the pipeline's shape: every event is published once (collector) and
// consumed by two consumers of that stream (normalize, archive); the first
// republishes the events in batched messages (up to bus.MaxBatchCalls
// events or bus.MaxBatchBytes a message, acknowledging the events once
// their batch is stored) to a second stream read by two more consumers
// (ClickHouse, Langfuse), each of the five on its own connection, as the
// processes are. That is 1 publish and 2 consume+ack per event plus the
// batches' share, against 1 and 1 in rawJetStream: the ceiling of
// callpipe's topology on this machine before any stage does anything.
func (b *bench) rawTopology(ctx context.Context) (rate float64, batches uint64, err error) {
	n := b.o.Events
	url := b.js.Conn().ConnectedUrl()
	names := [2]string{"BENCH_TOPO_IN_" + strings.ToUpper(b.runID), "BENCH_TOPO_OUT_" + strings.ToUpper(b.runID)}
	subjects := [2]string{"bench.topo.in." + b.runID, "bench.topo.out." + b.runID}
	for i, name := range names {
		if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subjects[i]},
			Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute}); err != nil {
			return 0, 0, fmt.Errorf("topology stream %s: %w", name, err)
		}
		defer func() { _ = b.js.DeleteStream(context.WithoutCancel(ctx), name) }()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	consume := func(stream, durable string, forward bool) error {
		nc, err := nats.Connect(url)
		if err != nil {
			return fmt.Errorf("topology %s: %w", durable, err)
		}
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(64))
		if err != nil {
			nc.Close()
			return err
		}
		cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{Durable: durable,
			AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000})
		if err != nil {
			nc.Close()
			return fmt.Errorf("topology consumer %s: %w", durable, err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(2000))
		if err != nil {
			nc.Close()
			return err
		}
		wg.Go(func() {
			defer nc.Close()
			defer it.Stop()
			var fw *topoForwarder
			if forward {
				fw = &topoForwarder{js: js, subject: subjects[1], stored: make(chan topoBatch, 64), acked: make(chan struct{}), fail: fail}
				defer fw.close(ctx)
				go fw.ackStored()
			}
			for events := 0; events < n; {
				m, err := it.Next(jetstream.NextContext(ctx))
				if err != nil {
					fail(fmt.Errorf("topology %s: %w", durable, err))
					return
				}
				if !forward {
					items, err := bus.Items(m.Headers(), m.Data())
					if err != nil {
						fail(fmt.Errorf("topology %s: %w", durable, err))
						return
					}
					events += len(items)
					_ = m.Ack()
					continue
				}
				events++
				if err := fw.add(m, events == n); err != nil {
					fail(fmt.Errorf("topology %s: forward: %w", durable, err))
					return
				}
			}
		})
		return nil
	}
	start := time.Now()
	for _, c := range []struct {
		stream, durable string
		forward         bool
	}{{names[0], "normalize", true}, {names[0], "archive", false}, {names[1], "clickhouse", false}, {names[1], "langfuse", false}} {
		if err := consume(c.stream, c.durable, c.forward); err != nil {
			cancel()
			wg.Wait()
			return 0, 0, err
		}
	}
	if _, err := b.publishEvents(subjects[0], "topo-"); err != nil {
		cancel()
		wg.Wait()
		return 0, 0, fmt.Errorf("topology publish: %w", err)
	}
	wg.Wait()
	select { // errs stays open: a forwarder's acknowledger may still report after a failure
	case err := <-errs:
		return 0, 0, err
	default:
	}
	rate = float64(n) / time.Since(start).Seconds()
	out, err := b.js.Stream(ctx, names[1])
	if err != nil {
		return 0, 0, fmt.Errorf("topology stream %s: %w", names[1], err)
	}
	batches = out.CachedInfo().State.Msgs
	b.say("raw        JetStream topology of callpipe with no work (1 publish + 2 consumes per event, then %d batched messages): %.0f events/s", batches, rate)
	return rate, batches, nil
}

// topoForwarder is rawTopology's normalize: it gathers consumed events into
// batched messages and acknowledges them once their batch is stored.
type topoForwarder struct {
	js      jetstream.JetStream
	subject string
	held    []jetstream.Msg
	body    []byte
	stored  chan topoBatch
	acked   chan struct{} // closed once ackStored has returned
	fail    func(error)
}

type topoBatch struct {
	ack  jetstream.PubAckFuture
	msgs []jetstream.Msg
}

// add holds m and publishes the batch when it is full or last is set.
func (f *topoForwarder) add(m jetstream.Msg, last bool) error {
	line := bytes.TrimSuffix(m.Data(), []byte("\n")) // the bench's events are NDJSON lines
	if len(f.body)+len(line)+1 > bus.MaxBatchBytes && len(f.held) > 0 {
		if err := f.publish(); err != nil {
			return err
		}
	}
	f.held = append(f.held, m)
	f.body = append(append(f.body, line...), '\n')
	if len(f.held) == bus.MaxBatchCalls || last {
		return f.publish()
	}
	return nil
}

func (f *topoForwarder) publish() error {
	md, err := f.held[0].Metadata()
	if err != nil {
		return err
	}
	out := &nats.Msg{Subject: f.subject, Data: f.body[:len(f.body)-1], Header: nats.Header{}}
	out.Header.Set(bus.HeaderMsgID, "batch-"+strconv.FormatUint(md.Sequence.Stream, 10))
	out.Header.Set(bus.HeaderCalls, strconv.Itoa(len(f.held)))
	ack, err := f.js.PublishMsgAsync(out, jetstream.WithStallWait(time.Minute))
	if err != nil {
		return err
	}
	f.stored <- topoBatch{ack: ack, msgs: f.held}
	f.held, f.body = nil, nil
	return nil
}

// ackStored acknowledges each batch's events once the batch is stored.
func (f *topoForwarder) ackStored() {
	defer close(f.acked)
	for b := range f.stored {
		select {
		case <-b.ack.Ok():
			for _, m := range b.msgs {
				_ = m.Ack()
			}
		case err := <-b.ack.Err():
			f.fail(fmt.Errorf("topology: batch not stored: %w", err))
		}
	}
}

// close waits until every batch is stored and its events acknowledged.
func (f *topoForwarder) close(ctx context.Context) {
	close(f.stored)
	select {
	case <-f.acked:
	case <-ctx.Done():
		f.fail(errors.New("topology: forwarded events not acknowledged in time"))
	}
}
