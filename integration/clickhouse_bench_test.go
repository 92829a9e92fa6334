package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// cpuMeter reads the CPU time of this process (getrusage) and of the
// ClickHouse server of the stack (/proc/PID/stat), so that throughput can be
// reported per CPU-second on a machine shared with other work.
type cpuMeter struct {
	self, server time.Duration
	serverPID    int
}

func newCPUMeter() *cpuMeter {
	m := &cpuMeter{}
	if b, err := os.ReadFile(filepath.Join(os.Getenv("CALLPIPE_STATE_DIR"), "clickhouse", "clickhouse.pid")); err == nil {
		m.serverPID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	m.self, m.server = selfCPU(), procCPU(m.serverPID)
	return m
}

// since returns the CPU used by this process and by the server since newCPUMeter.
func (m *cpuMeter) since() (self, server time.Duration) {
	return selfCPU() - m.self, procCPU(m.serverPID) - m.server
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ
}

func reportCPU(b *testing.B, m *cpuMeter, rows int) {
	self, server := m.since()
	if self > 0 {
		b.ReportMetric(float64(rows)/self.Seconds(), "rows/client-cpu-s")
	}
	if server > 0 {
		b.ReportMetric(float64(rows)/server.Seconds(), "rows/server-cpu-s")
	}
}

// BenchmarkClickHouseOutputWriteBatch: rows/s of Output.WriteBatch (one
// 50,000-row INSERT into calls, feeding both rollup ledgers) on the local
// server; inflight-2 runs two writers at once (max_in_flight 2).
//
//	. /work/stacks/sN/env && go test -run '^$' -bench BenchmarkClickHouseOutputWriteBatch -benchtime 20x ./integration/
func BenchmarkClickHouseOutputWriteBatch(b *testing.B) {
	for _, inflight := range []int{1, 2} {
		b.Run(fmt.Sprintf("inflight-%d", inflight), func(b *testing.B) {
			out, db := chTestDB(b)
			const batch = 50000
			calls := benchCalls(batch, "bw")
			ctx := context.Background()
			m := newCPUMeter()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, b.N)
			sem := make(chan struct{}, inflight)
			for i := 0; i < b.N; i++ {
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					if err := out.WriteBatch(ctx, calls); err != nil {
						errs <- err
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N*batch)/el.Seconds(), "rows/s")
			b.ReportMetric(0, "ns/op")
			reportCPU(b, m, b.N*batch)
			logParts(b, out, db, el)
		})
	}
}

// BenchmarkClickHouseSinkEndToEnd: rows/s from CALLPIPE_NORMALIZED into
// ClickHouse through the sink (pull, decode, batch of 50,000 or 1 s, insert,
// ack), one sink, in-flight 2. Each iteration publishes 200,000 calls first
// (not timed), then times the sink until everything is acked.
//
//	. /work/stacks/sN/env && go test -run '^$' -bench BenchmarkClickHouseSinkEndToEnd -benchtime 2x -timeout 30m ./integration/
func BenchmarkClickHouseSinkEndToEnd(b *testing.B) {
	out, db := chTestDB(b)
	n := newCHNATS(b)
	const per = 200000
	var total, self, server time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		calls := benchCalls(per, fmt.Sprintf("be%d", i))
		n.publish(b, calls, "")
		b.StartTimer()
		m := newCPUMeter()
		start := time.Now()
		cfg := n.sinkConfig(50000, time.Second)
		_, stop := runSink(b, n, out, cfg)
		waitStored(b, n, out, db, uint64((i+1)*per), 10*time.Minute)
		total += time.Since(start)
		b.StopTimer()
		stop()
		s, v := m.since()
		self, server = self+s, server+v
	}
	rows := float64(b.N * per)
	b.ReportMetric(rows/total.Seconds(), "rows/s")
	b.ReportMetric(0, "ns/op")
	if self > 0 {
		b.ReportMetric(rows/self.Seconds(), "rows/client-cpu-s")
	}
	if server > 0 {
		b.ReportMetric(rows/server.Seconds(), "rows/server-cpu-s")
	}
	logParts(b, out, db, total)
}

// logParts reports the parts inserts created (level 0 parts: active or
// merged away, not yet removed; old parts live 8 minutes) per minute, and
// the active parts left. system.part_log is not enabled on the test server.
func logParts(b *testing.B, out *chsink.Output, db string, el time.Duration) {
	var created, active uint64
	q := "SELECT toUInt64(countIf(level = 0)), toUInt64(countIf(active)) FROM system.parts WHERE database = '" + db + "'"
	if err := out.Conn().QueryRow(context.Background(), q).Scan(&created, &active); err != nil {
		b.Logf("parts: %v", err)
		return
	}
	b.ReportMetric(float64(created)/el.Minutes(), "parts/min")
	b.Logf("%s: %d parts created by inserts (calls + 2 rollup ledgers), %.0f/min; %d active parts after", el.Round(time.Millisecond), created, float64(created)/el.Minutes(), active)
}
