package bench

import (
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

// rawTopology measures the pipeline's JetStream traffic with no work in it:
// every event is published once (collector), consumed by two consumers of
// that stream (normalize, archive), one of which republishes it to a second
// stream (normalized) read by two more consumers (ClickHouse, Langfuse) —
// each of the five on its own connection, as the processes are. That is 2
// publishes and 4 consume+ack per event, against 1 and 1 in rawJetStream:
// the ceiling of callpipe's topology on this machine before any stage does
// anything.
func (b *bench) rawTopology(ctx context.Context) (float64, error) {
	n := b.o.Events
	url := b.js.Conn().ConnectedUrl()
	names := [2]string{"BENCH_TOPO_IN_" + strings.ToUpper(b.runID), "BENCH_TOPO_OUT_" + strings.ToUpper(b.runID)}
	subjects := [2]string{"bench.topo.in." + b.runID, "bench.topo.out." + b.runID}
	for i, name := range names {
		if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subjects[i]},
			Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute}); err != nil {
			return 0, fmt.Errorf("topology stream %s: %w", name, err)
		}
		defer func() { _ = b.js.DeleteStream(context.WithoutCancel(ctx), name) }()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	consume := func(stream, durable string, forward bool) error {
		nc, err := nats.Connect(url)
		if err != nil {
			return fmt.Errorf("topology %s: %w", durable, err)
		}
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4000))
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
			for range n {
				m, err := it.Next(jetstream.NextContext(ctx))
				if err != nil {
					errs <- fmt.Errorf("topology %s: %w", durable, err)
					return
				}
				if forward {
					md, err := m.Metadata()
					if err == nil {
						out := &nats.Msg{Subject: subjects[1], Data: m.Data(), Header: nats.Header{}}
						out.Header.Set(bus.HeaderMsgID, strconv.FormatUint(md.Sequence.Stream, 10))
						_, err = js.PublishMsgAsync(out, jetstream.WithStallWait(time.Minute))
					}
					if err != nil {
						errs <- fmt.Errorf("topology %s: forward: %w", durable, err)
						return
					}
				}
				_ = m.Ack()
			}
			if forward {
				select {
				case <-js.PublishAsyncComplete():
				case <-ctx.Done():
					errs <- errors.New("topology: forwarded events not acknowledged in time")
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
			return 0, err
		}
	}
	if _, err := b.publishEvents(subjects[0], "topo-"); err != nil {
		cancel()
		wg.Wait()
		return 0, fmt.Errorf("topology publish: %w", err)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	rate := float64(n) / time.Since(start).Seconds()
	b.say("raw        JetStream topology of callpipe with no work (2 publishes + 4 consumes per event): %.0f events/s", rate)
	return rate, nil
}
