package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
)

// benchCalls are calls of about 600 bytes of JSON on one day.
func benchCalls(n int, prefix string) []schema.Call {
	calls := genCalls(11, prefix, n, 1, 5, 50, chBase)
	for i := range calls {
		calls[i].InputText = "What is the capital of France? Answer in one word."
		calls[i].OutputText = "Paris."
	}
	return calls
}

// BenchmarkClickHouseOutputWriteBatch: rows/s of Output.WriteBatch (one
// 50,000-row INSERT into calls, feeding both rollup ledgers) on the local
// server.
//
//	. .state/services/env && go test -run '^$' -bench BenchmarkClickHouseOutputWriteBatch -benchtime 20x ./integration/
func BenchmarkClickHouseOutputWriteBatch(b *testing.B) {
	out, db := chTestDB(b)
	const batch = 50000
	calls := benchCalls(batch, "bw")
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := out.WriteBatch(ctx, calls); err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N*batch)/el.Seconds(), "rows/s")
	b.ReportMetric(0, "ns/op")
	logParts(b, out, db, b.N, el)
}

// BenchmarkClickHouseSinkEndToEnd: rows/s from CALLPIPE_NORMALIZED into
// ClickHouse through the sink (pull, decode, batch of 50,000 or 1 s, insert,
// ack), one sink, default in-flight 2. Each iteration publishes 200,000 calls
// first (not timed), then times the sink until everything is acked.
//
//	. .state/services/env && go test -run '^$' -bench BenchmarkClickHouseSinkEndToEnd -benchtime 2x -timeout 30m ./integration/
func BenchmarkClickHouseSinkEndToEnd(b *testing.B) {
	out, db := chTestDB(b)
	n := newCHNATS(b)
	const per = 200000
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		calls := benchCalls(per, fmt.Sprintf("be%d", i))
		n.publish(b, calls, "")
		b.StartTimer()
		start := time.Now()
		cfg := n.sinkConfig(50000, time.Second)
		_, stop := runSink(b, n, out, cfg)
		waitStored(b, n, out, db, uint64((i+1)*per), 10*time.Minute)
		total += time.Since(start)
		b.StopTimer()
		stop()
	}
	b.ReportMetric(float64(b.N*per)/total.Seconds(), "rows/s")
	b.ReportMetric(0, "ns/op")
	logParts(b, out, db, 0, total)
}

func logParts(b *testing.B, out *chsink.Output, db string, inserts int, el time.Duration) {
	var parts uint64
	q := "SELECT toUInt64(count()) FROM system.parts WHERE database = '" + db + "' AND active"
	if err := out.Conn().QueryRow(context.Background(), q).Scan(&parts); err != nil {
		b.Logf("parts: %v", err)
		return
	}
	if inserts > 0 {
		b.Logf("%d inserts in %s: %.0f inserts/min, each creating 3 parts (calls + 2 rollup ledgers, 1 partition); %d active parts after", inserts, el.Round(time.Millisecond), float64(inserts)/el.Minutes(), parts)
	} else {
		b.Logf("%s: %d active parts after", el.Round(time.Millisecond), parts)
	}
}
