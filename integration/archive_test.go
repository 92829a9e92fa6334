package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// TestArchive100k runs `callpipe worker --stages archive` over 100,000 calls
// spread over 4 hours of a day: the union of the archive objects is exactly
// the input (ids and bytes), each object respects the flush rules (closed by
// size at or above flush_bytes, or by age after flush_interval), replayed
// events are not archived, undecodable ones are (under their stream
// timestamp's hour) and a multi-line JSON event is stored compacted.
func TestArchive100k(t *testing.T) {
	e := newArchEnv(t)
	const n = 100_000
	const flushBytes = 2 << 20
	const flushInterval = 4 * time.Second
	day := archDay(t)
	evs := archEvents(e.run, n, day, 4, 100, 7)
	want := eventRaws(evs)
	e.publish(t, want, func(i int) string { return evs[i].id }, nil)

	// replayed calls on the same subjects must be skipped
	replayed := archEvents(e.run+"-replayed", 50, day, 4, 10, 8)
	e.publish(t, eventRaws(replayed), func(i int) string { return "rp-" + replayed[i].id },
		nats.Header{bus.HeaderReplay: []string{"it-job"}})
	// undecodable but single-line: archived as received
	var bad [][]byte
	for i := range 5 {
		bad = append(bad, fmt.Appendf(nil, `{"id":"%s-bad-%d","start_time":"not a time"}`, e.run, i))
	}
	e.publish(t, bad, func(i int) string { return fmt.Sprintf("%s-bad-%d", e.run, i) }, nil)
	// valid JSON over several lines: stored compacted
	multiStart := day.Add(time.Hour).Format(time.RFC3339)
	multi := fmt.Sprintf("{\n  \"id\": \"%s-multi\",\n  \"start_time\": \"%s\",\n  \"endpoint\": \"/v1/embeddings\",\n  \"model\": \"m\"\n}", e.run, multiStart)
	e.publish(t, [][]byte{[]byte(multi)}, func(int) string { return e.run + "-multi" }, nil)
	last := e.lastSeq(t)

	start := time.Now()
	w := e.start(t, e.env(
		fmt.Sprintf("CALLPIPE_ARCHIVE_FLUSH_BYTES=%d", flushBytes),
		"CALLPIPE_ARCHIVE_FLUSH_INTERVAL="+flushInterval.String(), "CALLPIPE_ARCHIVE_ACK_WAIT=1m",
		"CALLPIPE_WORKER_LISTEN="+testkit.FreeAddr(t)),
		"worker", "--stages", "archive")
	e.waitArchived(t, 2*time.Minute, last)
	t.Logf("archived %d calls in %s (binary build included)", n, time.Since(start).Round(time.Millisecond))
	// every message acked on its first delivery: the sink acks what it holds
	// after the upload, not through a redelivery (ack wait 1m)
	if c, err := e.js.Consumer(context.Background(), bus.CallsStream, e.consumer); err != nil {
		t.Fatal(err)
	} else if ci, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	} else if want := uint64(n + len(replayed) + len(bad) + 1); ci.Delivered.Consumer != want {
		t.Errorf("%d deliveries for %d messages: some were redelivered, not acked", ci.Delivered.Consumer, want)
	}
	w.Stop(t, 30*time.Second)

	now := time.Now().UTC()
	objs := e.readArchive(t, day, now.Add(time.Hour))
	all := append(append([][]byte{}, want...), bad...)
	all = append(all, []byte(fmt.Sprintf(`{"id":"%s-multi","start_time":"%s","endpoint":"/v1/embeddings","model":"m"}`, e.run, multiStart)))
	checkExactlyOnce(t, objs, all)

	perHour := map[time.Time]int64{}
	for _, ev := range evs {
		perHour[ev.start.Truncate(time.Hour)] += int64(len(ev.raw)) + 1
	}
	objsPerHour := map[time.Time]int{}
	for _, o := range objs {
		objsPerHour[o.Hour]++
		switch o.meta.Flush {
		case rawarchive.FlushSize:
			if o.meta.Bytes < flushBytes {
				t.Errorf("%s closed by size at %d bytes, below flush_bytes %d", o.Key, o.meta.Bytes, flushBytes)
			}
		case rawarchive.FlushAge:
			if age := o.meta.Closed.Sub(o.meta.Opened); age < flushInterval {
				t.Errorf("%s closed by age after %s, before flush_interval %s", o.Key, age, flushInterval)
			}
		default:
			t.Errorf("%s closed by %q; only size and age are expected before shutdown", o.Key, o.meta.Flush)
		}
		for _, l := range o.lines {
			if strings.Contains(string(l), "-bad-") && !o.Hour.Equal(now.Truncate(time.Hour)) && !o.Hour.Equal(now.Add(-time.Hour).Truncate(time.Hour)) {
				t.Errorf("undecodable line in %s, want the hour of its stream timestamp (%s)", o.Key, now.Truncate(time.Hour))
			}
		}
	}
	for h, b := range perHour {
		// every object but the last of an hour is closed by size
		if max := int(b/flushBytes) + 1; objsPerHour[h] > max {
			t.Errorf("hour %s: %d objects for %d bytes, want at most %d", h, objsPerHour[h], b, max)
		}
	}
	t.Logf("%d objects for %d calls", len(objs), n)
}

// TestArchiveSIGTERMFlushes stops the archive worker with SIGTERM while every
// call sits in open objects (flush interval 1h): it stores them as shutdown
// objects, acks them and exits 0.
func TestArchiveSIGTERMFlushes(t *testing.T) {
	e := newArchEnv(t)
	day := archDay(t)
	evs := archEvents(e.run, 2000, day, 2, 200, 5)
	want := eventRaws(evs)
	e.publish(t, want, func(i int) string { return evs[i].id }, nil)
	last := e.lastSeq(t)
	listen := testkit.FreeAddr(t)
	w := e.start(t, e.env("CALLPIPE_ARCHIVE_FLUSH_INTERVAL=1h", "CALLPIPE_ARCHIVE_ACK_WAIT=2h", "CALLPIPE_WORKER_LISTEN="+listen),
		"worker", "--stages", "archive")
	// JetStream counts a call unacked once it sends it, before it reaches
	// the worker; one still on its way when the worker stops pulling is
	// redelivered after AckWait (2h here), which is no part of this test:
	// SIGTERM comes once the worker's open objects hold every call.
	testkit.WaitFor(t, time.Minute, "every call delivered and held", func() (bool, string) {
		if n, err := metricValue(listen, "callpipe_archive_buffered_calls"); err != nil || n != float64(len(want)) {
			return false, fmt.Sprintf("buffered %v (%v)", n, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := e.js.Consumer(ctx, bus.CallsStream, e.consumer)
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumPending == 0 && ci.NumAckPending == len(want), fmt.Sprintf("pending=%d unacked=%d", ci.NumPending, ci.NumAckPending)
	})
	if objs := e.readArchive(t, day, day.Add(2*time.Hour)); len(objs) != 0 {
		t.Fatalf("%d objects stored before SIGTERM with a 1h flush interval", len(objs))
	}
	w.Stop(t, 30*time.Second)
	e.waitArchived(t, 10*time.Second, last)
	objs := e.readArchive(t, day, day.Add(2*time.Hour))
	checkExactlyOnce(t, objs, want)
	for _, o := range objs {
		if o.meta.Flush != rawarchive.FlushShutdown {
			t.Errorf("%s closed by %q, want shutdown", o.Key, o.meta.Flush)
		}
	}
	if len(objs) != 2 {
		t.Errorf("%d objects for 2 hours of calls, want 2", len(objs))
	}
}
