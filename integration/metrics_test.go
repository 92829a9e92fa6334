package integration

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// scrape reads a /metrics page: family name → samples.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics of %s: %v", addr, err)
	}
	return fams
}

// sample is the value of the family's sample whose labels include want.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	total, found := 0.0, false
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total, found
}

// TestMetricsMoveWithThePipeline scrapes the collector's and the worker's
// /metrics while events flow: the counters and the consumer lag gauges must
// follow what is sent.
func TestMetricsMoveWithThePipeline(t *testing.T) {
	natsURL := harness.FreshNATS(t)
	ch := harness.ClickHouse(t)
	collectAddr, workerAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	db := "metrics_" + fmt.Sprint(time.Now().UnixNano()%1e9)
	chDropAtCleanup(t, db)
	env := []string{"CALLPIPE_NATS_URL=" + natsURL, "CALLPIPE_CLICKHOUSE_ADDR=" + ch.Native,
		"CALLPIPE_CLICKHOUSE_DATABASE=" + db, "CALLPIPE_REDIS_ADDR=", "CALLPIPE_LOG_LEVEL=warn"}
	mig := testkit.Start(t, append(os.Environ(), env...), "migrate")
	if err := mig.Err(); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	testkit.Start(t, append(os.Environ(), env...), "collect", "--listen", collectAddr)
	testkit.WaitHealthy(t, "http://"+collectAddr+"/readyz")

	const n = 3000
	send := func(from, to int) {
		var b strings.Builder
		for i := from; i < to; i++ {
			b.WriteString(eventJSON(fmt.Sprintf("%s-metrics-%d", runID, i), "") + "\n")
		}
		resp, err := http.Post("http://"+collectAddr+"/v1/events", "application/x-ndjson", strings.NewReader(b.String()))
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("post: %v %v", err, resp)
		}
		resp.Body.Close()
	}
	send(0, n/2)
	if v, _ := sample(scrape(t, collectAddr), "callpipe_collect_events_total", map[string]string{"result": "accepted"}); v != n/2 {
		t.Fatalf("collector accepted counter = %v, want %d", v, n/2)
	}

	// The worker starts with a backlog: its lag gauges must show it, then drain.
	testkit.Start(t, append(os.Environ(), env...), "worker", "--stages", "normalize,clickhouse", "--listen", workerAddr)
	testkit.WaitHealthy(t, "http://"+workerAddr+"/readyz")
	send(n/2, n)
	if v, _ := sample(scrape(t, collectAddr), "callpipe_collect_events_total", map[string]string{"result": "accepted"}); v != n {
		t.Fatalf("collector accepted counter = %v, want %d", v, n)
	}
	testkit.WaitFor(t, 90*time.Second, "worker metrics show every event through both stages", func() (bool, string) {
		f := scrape(t, workerAddr)
		norm, _ := sample(f, "callpipe_transform_events_total", map[string]string{"result": "normalized"})
		rows, _ := sample(f, "callpipe_clickhouse_rows_written_total", nil)
		pending, ok1 := sample(f, "callpipe_consumer_pending_messages", map[string]string{"stage": "normalize"})
		ackPending, ok2 := sample(f, "callpipe_consumer_ack_pending_messages", map[string]string{"stage": "clickhouse"})
		msgs, ok3 := sample(f, "callpipe_stream_messages", map[string]string{"stream": "CALLPIPE_CALLS"})
		_, ok4 := sample(f, "callpipe_stream_messages", map[string]string{"stream": "CALLPIPE_DLQ"})
		state := fmt.Sprintf("normalized %v, rows %v, normalize pending %v, clickhouse ack-pending %v, stream %v", norm, rows, pending, ackPending, msgs)
		return ok1 && ok2 && ok3 && ok4 && norm >= n && rows >= n && pending == 0 && ackPending == 0 && msgs == n, state
	})
}
