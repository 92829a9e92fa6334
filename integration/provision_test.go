package integration

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/bus"
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
