package integration

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestEnsureStreamsUpdatesOnlyWhatChanged provisions the pipeline's streams
// on a fresh JetStream and watches the server's stream advisories: the
// first run creates the three streams, a second run with the same options
// (what every replica of every stage does at start) changes nothing, and a
// run with another max age updates the two streams it sizes, not the
// dead-letter stream.
func TestEnsureStreamsUpdatesOnlyWhatChanged(t *testing.T) {
	ns := harness.StartNATSServer(t)
	nc, js := testkit.JetStream(t, ns.URL)
	var mu sync.Mutex
	var events []string
	sub, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		// $JS.EVENT.ADVISORY.STREAM.<CREATED|UPDATED|...>.<stream>
		events = append(events, strings.TrimPrefix(m.Subject, "$JS.EVENT.ADVISORY.STREAM."))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	provision := func(o bus.StreamOptions) []string {
		t.Helper()
		if err := bus.EnsureStreams(ctx, js, o); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // advisories follow the API answers
		mu.Lock()
		defer mu.Unlock()
		got := events
		events = nil
		return got
	}
	o := bus.DefaultStreamOptions()
	want := []string{"CREATED." + bus.CallsStream, "CREATED." + bus.NormalizedStream, "CREATED." + bus.DeadLetterStream}
	if got := provision(o); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("first provisioning: advisories %v, want %v", got, want)
	}
	if got := provision(o); len(got) != 0 {
		t.Fatalf("provisioning again with the same options: advisories %v, want none", got)
	}
	o.MaxAge = 3 * 24 * time.Hour
	want = []string{"UPDATED." + bus.CallsStream, "UPDATED." + bus.NormalizedStream}
	if got := provision(o); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("provisioning with another max age: advisories %v, want %v", got, want)
	}
}

// TestConsumerWhenReadyWaitsForJetStream makes a stage's durable consumer
// while its NATS server is away: bus.ConsumerWhenReady retries (logging
// each failure) and makes it once the server is back; a consumer JetStream
// refuses (deliver from a start sequence it does not name) fails at once.
func TestConsumerWhenReadyWaitsForJetStream(t *testing.T) {
	ns := harness.StartNATSServer(t)
	var logs testkit.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	_, js := testkit.PipelineJetStream(t, ingest.NATSOptions{URL: ns.URL, Logger: log})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, bus.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	_, err := bus.ConsumerWhenReady(ctx, log, js, bus.CallsStream, jetstream.ConsumerConfig{Durable: "refused", DeliverPolicy: jetstream.DeliverByStartSequencePolicy})
	if err == nil || !strings.Contains(err.Error(), "(code ") || strings.Contains(logs.String(), "not ready; retrying") {
		t.Fatalf("a consumer JetStream refuses: err %v after %s, want its answer at once, no retry; logs:\n%s", err, time.Since(start), logs.String())
	}
	t.Logf("refused at once (%s): %v", time.Since(start).Round(time.Millisecond), err)

	ns.Stop(t)
	made := make(chan error, 1)
	go func() {
		_, err := bus.ConsumerWhenReady(ctx, log, js, bus.CallsStream, jetstream.ConsumerConfig{Durable: "waits", AckPolicy: jetstream.AckExplicitPolicy})
		made <- err
	}()
	testkit.WaitFor(t, 30*time.Second, "a retry logged while NATS is away", func() (bool, string) {
		return strings.Contains(logs.String(), "jetstream consumer waits not ready; retrying"), logs.String()
	})
	select {
	case err := <-made:
		t.Fatalf("ConsumerWhenReady returned while NATS was away: %v", err)
	default:
	}
	ns.Start(t)
	select {
	case err := <-made:
		if err != nil {
			t.Fatalf("ConsumerWhenReady after NATS came back: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatalf("no consumer a minute after NATS came back; logs:\n%s", logs.String())
	}
	if _, err := js.Consumer(ctx, bus.CallsStream, "waits"); err != nil {
		t.Fatalf("the consumer made after NATS came back: %v", err)
	}
}
