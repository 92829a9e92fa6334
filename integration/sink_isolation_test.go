package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestOneSinkDownOthersKeepPace stops ClickHouse under a running pipeline
// (collector, normalize and the three sinks, each its own process) and sends
// a second wave of calls: the Langfuse and archive sinks must take every call
// of it while ClickHouse is still down, at a pace comparable to the first
// wave's with everything up, while the ClickHouse consumer's backlog holds the
// wave. Once ClickHouse is back, its sink stores every call of both waves once.
// A sink that waited for another (a shared pull, a shared ack, normalize
// blocking on one consumer) would deliver nothing during the outage.
func TestOneSinkDownOthersKeepPace(t *testing.T) {
	const wave = 20_000
	natsSrv := harness.StartNATSServer(t)
	chAddr := harness.ClickHouse(t)
	s3 := harness.S3(t)
	redisAddr := harness.Redis(t)
	bin := testkit.Binary(t)

	run := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000, 36)
	db := "isolation_" + run
	chDropAtCleanup(t, db)
	bucket := "isolation-" + run
	lf := langfusetest.New(langfusetest.Options{})
	defer lf.Close()

	env := append(os.Environ(),
		"CALLPIPE_NATS_URL="+natsSrv.URL,
		"CALLPIPE_CLICKHOUSE_ADDR="+chAddr.Native, "CALLPIPE_CLICKHOUSE_DATABASE="+db,
		"CALLPIPE_S3_ENDPOINT="+s3.Endpoint, "CALLPIPE_S3_ACCESS_KEY="+s3.AccessKey, "CALLPIPE_S3_SECRET_KEY="+s3.SecretKey,
		"CALLPIPE_S3_BUCKET="+bucket, "CALLPIPE_S3_USE_SSL=false",
		"CALLPIPE_REDIS_ADDR="+redisAddr, "CALLPIPE_TRANSFORM_USER_KEY_PREFIX=isolation:"+run+":",
		"CALLPIPE_ARCHIVE_FLUSH_INTERVAL=2s",
		"LANGFUSE_HOST="+lf.Host(), "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
		"CALLPIPE_LANGFUSE_TRANSPORT=ingestion",
		"CALLPIPE_LOG_LEVEL=warn",
	)
	migrate := exec.Command(bin, "migrate")
	migrate.Env = env
	if out, err := migrate.CombinedOutput(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}

	collectAddr := testkit.FreeAddr(t)
	testkit.Start(t, env, "collect", "--collect.listen", collectAddr)
	for _, stage := range []string{"normalize", "clickhouse", "langfuse", "archive"} {
		testkit.Start(t, env, "worker", "--stages", stage, "--worker.listen", testkit.FreeAddr(t))
	}
	testkit.WaitHealthy(t, "http://"+collectAddr+"/readyz")

	_, js := testkit.JetStream(t, natsSrv.URL)
	consumerState := func(stream, consumer string) (pending, ackPending uint64, err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, stream, consumer)
		if err != nil {
			return 0, 0, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return 0, 0, err
		}
		return info.NumPending, uint64(info.NumAckPending), nil
	}
	archiveConsumer := bus.StageOf(bus.StageArchive).Consumer
	clickhouseConsumer := bus.StageOf(bus.StageClickHouse).Consumer

	start := time.Now().Add(-time.Minute)
	send := func(lo, hi int) {
		t.Helper()
		client := &http.Client{Timeout: 30 * time.Second}
		for b := lo; b < hi; b += 500 {
			var body []byte
			for n := b; n < min(b+500, hi); n++ {
				body = faultEvent(body, run, n, start)
			}
			resp, err := client.Post("http://"+collectAddr+"/v1/events", "application/x-ndjson", bytes.NewReader(body))
			if err != nil {
				t.Fatalf("post batch at %d: %v", b, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("post batch at %d: HTTP %d", b, resp.StatusCode)
			}
		}
	}
	langfuseHas := func(lo, hi int) (int, string) {
		missing := 0
		for n := lo; n < hi; n++ {
			id := "fault-" + run + "-" + strconv.Itoa(n)
			if lf.Envelopes("trace", id) == 0 || lf.Envelopes("observation", id) == 0 {
				missing++
			}
		}
		return missing, fmt.Sprintf("%d of calls %d..%d not in Langfuse", missing, lo, hi-1)
	}
	// deliveredBy waits until Langfuse holds calls [lo, hi) and the archive
	// consumer has nothing pending, and returns how long that took.
	deliveredBy := func(what string, lo, hi int, began time.Time) time.Duration {
		t.Helper()
		testkit.WaitFor(t, 4*time.Minute, what, func() (bool, string) {
			missing, lfState := langfuseHas(lo, hi)
			pending, ackPending, err := consumerState(bus.CallsStream, archiveConsumer)
			if err != nil {
				return false, lfState + "; archive consumer: " + err.Error()
			}
			return missing == 0 && pending == 0 && ackPending == 0,
				fmt.Sprintf("%s; archive pending %d ack-pending %d", lfState, pending, ackPending)
		})
		return time.Since(began)
	}

	// Wave 1, everything up.
	began := time.Now()
	send(0, wave)
	baseline := deliveredBy("wave 1 in Langfuse and the archive", 0, wave, began)
	testkit.WaitFor(t, 4*time.Minute, "wave 1 in ClickHouse", func() (bool, string) {
		pending, ackPending, err := consumerState(bus.NormalizedStream, clickhouseConsumer)
		if err != nil {
			return false, err.Error()
		}
		return pending == 0 && ackPending == 0, fmt.Sprintf("clickhouse pending %d ack-pending %d", pending, ackPending)
	})

	// Wave 2, ClickHouse down for all of it.
	harness.StopService(t, harness.ServiceClickHouse)
	began = time.Now()
	send(wave, 2*wave)
	during := deliveredBy("wave 2 in Langfuse and the archive while ClickHouse is down", wave, 2*wave, began)
	pending, ackPending, err := consumerState(bus.NormalizedStream, clickhouseConsumer)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wave of %d calls delivered to Langfuse and the archive in %s with every sink up, %s with ClickHouse down "+
		"(ClickHouse consumer then: pending %d, ack-pending %d)", wave, baseline.Round(time.Millisecond), during.Round(time.Millisecond), pending, ackPending)
	// (messages on CALLPIPE_NORMALIZED carry batches of calls, so these
	// count messages, not calls)
	if pending+ackPending == 0 {
		t.Errorf("ClickHouse consumer holds nothing while ClickHouse is down after a wave of %d calls: did the wave go elsewhere?", wave)
	}
	// Generous on purpose: a coupled sink stalls (no delivery at all until
	// ClickHouse returns), it is not a little slower.
	if limit := 3*baseline + 15*time.Second; during > limit {
		t.Errorf("Langfuse and the archive took %s for a wave with ClickHouse down, %s with it up (limit %s): one sink down slows the others",
			during, baseline, limit)
	}

	// ClickHouse back: its sink catches up, every call of both waves once.
	harness.StartService(t, harness.ServiceClickHouse)
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr.Native}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	testkit.WaitFor(t, 5*time.Minute, "both waves in ClickHouse", func() (bool, string) {
		var distinct, final uint64
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := conn.QueryRow(ctx, "SELECT toUInt64(uniqExact(id)), toUInt64(count()) FROM "+db+".calls FINAL").Scan(&distinct, &final); err != nil {
			return false, err.Error()
		}
		return distinct == 2*wave && final == 2*wave, fmt.Sprintf("distinct ids %d, rows %d, want %d", distinct, final, 2*wave)
	})
	if missing, state := langfuseHas(0, 2*wave); missing != 0 {
		t.Error(state)
	}
}
