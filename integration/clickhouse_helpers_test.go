package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

// chTestDB creates a fresh database (dropped at the end), applies the
// migrations and returns an output connected to it.
func chTestDB(t testing.TB) (*chsink.Output, string) {
	t.Helper()
	addr := harness.ClickHouse(t)
	db := "callpipe_test_" + testkit.RandomHex(t, 5)
	out := chsink.NewOutput(chsink.OutputConfig{Config: callsdb.Config{Addr: addr.Native, Database: db, User: "default"}, MaxTextBytes: 4096, MaxInFlight: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := out.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		chDropDB(t, out, db)
		_ = out.Close()
	})
	if _, err := (&callsdb.Migrator{Conn: out.Conn(), Database: db}).Up(ctx); err != nil {
		t.Fatal(err)
	}
	return out, db
}

// chDropDB drops a test database: its materialized views first, then the
// other tables, then the database. (ClickHouse 18.16 can hang in a DROP
// DATABASE that meets a materialized view whose source table it already
// dropped.)
func chDropDB(t testing.TB, out *chsink.Output, db string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var tables []string
	rows, err := out.Conn().Query(ctx, "SELECT name FROM system.tables WHERE database = ? ORDER BY engine != 'MaterializedView', name", db)
	if err != nil {
		t.Logf("tables of %s: %v", db, err)
		return
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Logf("tables of %s: %v", db, err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	for _, obj := range tables {
		if err := out.Conn().Exec(ctx, "DROP TABLE IF EXISTS "+db+"."+obj); err != nil {
			t.Logf("drop %s.%s: %v", db, obj, err)
		}
	}
	if err := out.Conn().Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
		t.Logf("drop %s: %v", db, err)
	}
}

// chDropAtCleanup drops database db (made by the callpipe processes of a
// test) when the test ends, unless it failed: then it is kept for a look
// and its name logged.
func chDropAtCleanup(t testing.TB, db string) {
	t.Helper()
	addr := harness.ClickHouse(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ClickHouse database %s kept for inspection (the test failed)", db)
			return
		}
		out := chsink.NewOutput(chsink.OutputConfig{Config: callsdb.Config{Addr: addr.Native, Database: "default", User: "default"}, MaxInFlight: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := out.Connect(ctx); err != nil {
			t.Logf("drop %s: %v", db, err)
			return
		}
		defer out.Close()
		chDropDB(t, out, db)
	})
}

// chNATS connects to the test NATS and makes sure CALLPIPE_NORMALIZED and
// CALLPIPE_DLQ exist (the transform stage owns them; tests create them when
// missing with the documented layout). Each test uses its own subject under
// callpipe.normalized.> and its own consumer, so it reads only its messages.
type chNATS struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	subject  string // callpipe.normalized.<test>
	consumer string
}

func newCHNATS(t testing.TB) *chNATS {
	t.Helper()
	nc, js := testkit.PipelineJetStream(t, ingest.NATSOptions{URL: harness.NATS(t)}, jetstream.WithPublishAsyncMaxPending(4096))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, sc := range []jetstream.StreamConfig{
		{Name: bus.NormalizedStream, Subjects: []string{bus.NormalizedSubjectPrefix + ".>"}, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute},
		{Name: bus.DeadLetterStream, Subjects: []string{bus.DeadLetterSubjectPrefix + ".>"}, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute},
	} {
		if _, err := js.Stream(ctx, sc.Name); errors.Is(err, jetstream.ErrStreamNotFound) {
			if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
				t.Fatal(err)
			}
		} else if err != nil {
			t.Fatal(err)
		}
	}
	tag := "cht" + testkit.RandomHex(t, 4)
	n := &chNATS{nc: nc, js: js, subject: bus.NormalizedSubjectPrefix + "." + tag, consumer: "callpipe-clickhouse-" + tag}
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		_ = js.DeleteConsumer(dctx, bus.NormalizedStream, n.consumer)
		if st, err := js.Stream(dctx, bus.NormalizedStream); err == nil {
			_ = st.Purge(dctx, jetstream.WithPurgeSubject(n.subject))
		}
	})
	return n
}

// publish stores calls with Nats-Msg-Id = msgIDPrefix + call id (a replay
// from the archive after the duplicate window looks like a new prefix).
func (n *chNATS) publish(t testing.TB, calls []schema.Call, msgIDPrefix string) {
	t.Helper()
	if err := n.publishE(calls, msgIDPrefix); err != nil {
		t.Fatal(err)
	}
}

// publishE is publish for goroutines other than the test's.
func (n *chNATS) publishE(calls []schema.Call, msgIDPrefix string) error {
	// a slow (shared, -race) machine publishes a few thousand calls a second
	ctx, cancel := context.WithTimeout(context.Background(), max(2*time.Minute, time.Duration(len(calls))*2*time.Millisecond))
	defer cancel()
	for i := range calls {
		b, err := json.Marshal(&calls[i])
		if err != nil {
			return err
		}
		m := nats.NewMsg(n.subject)
		m.Data = b
		m.Header.Set(nats.MsgIdHdr, msgIDPrefix+calls[i].ID)
		if _, err := n.js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
			return err
		}
	}
	select {
	case <-n.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return errors.New("publish: timed out waiting for acks")
	}
}

func (n *chNATS) sinkConfig(batch int, period time.Duration) chsink.SinkConfig {
	return chsink.SinkConfig{Config: sinks.Config{
		Consumer: n.consumer, FilterSubject: n.subject,
		Batch:   sinks.BatchPolicy{Count: batch, Period: period},
		AckWait: 30 * time.Second, BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second,
	}}
}

// runSink starts a sink; stop cancels it and waits for Run to return.
func runSink(t testing.TB, n *chNATS, out *chsink.Output, cfg chsink.SinkConfig) (s *chsink.Sink, stop func()) {
	t.Helper()
	s, err := chsink.NewSink(n.nc, out, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sink run: %v", err)
			}
		case <-time.After(2 * time.Minute):
			t.Errorf("sink did not stop")
		}
	}
	t.Cleanup(stop)
	return s, stop
}

// consumerIdle reports whether durable name on stream has nothing pending
// or unacknowledged, and says how much it has otherwise.
func consumerIdle(js jetstream.JetStream, stream, name string) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, stream, name)
	if err != nil {
		return false, err.Error()
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return false, err.Error()
	}
	return ci.NumPending == 0 && ci.NumAckPending == 0, fmt.Sprintf("pending=%d unacked=%d", ci.NumPending, ci.NumAckPending)
}

// waitStored waits until {db}.calls holds distinct call ids and the test's
// consumer has nothing pending or unacked. (Row counts cannot show progress:
// merges collapse redelivered copies at any time.)
func waitStored(t testing.TB, n *chNATS, out *chsink.Output, db string, distinct uint64, timeout time.Duration) {
	t.Helper()
	testkit.WaitFor(t, timeout, fmt.Sprintf("%d distinct calls, consumer caught up", distinct), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d, r, err := callsdb.CallCounts(ctx, out.Conn(), db)
		if err != nil {
			return false, err.Error()
		}
		c, err := n.js.Consumer(ctx, bus.NormalizedStream, n.consumer)
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return d == distinct && ci.NumPending == 0 && ci.NumAckPending == 0,
			fmt.Sprintf("distinct=%d rows=%d pending=%d unacked=%d", d, r, ci.NumPending, ci.NumAckPending)
	})
}

// genCalls makes n calls over days days from base (UTC midnight), models
// models and users users, with errors, missing TTFT/cost and ms times.
func genCalls(seed uint64, prefix string, n, days, models, users int, base time.Time) []schema.Call {
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]schema.Call, n)
	for i := range out {
		start := base.Add(time.Duration(r.Int64N(int64(days)*int64(24*time.Hour)/int64(time.Millisecond))) * time.Millisecond)
		lat := 5 + r.Int64N(20000)
		in, o := r.Int64N(4000), r.Int64N(2000)
		c := schema.Call{
			ID: fmt.Sprintf("%s-%07d", prefix, i), TraceID: fmt.Sprintf("t-%d", i),
			StartTime: start, EndTime: start.Add(time.Duration(lat) * time.Millisecond), LatencyMS: lat,
			Endpoint: "/v1/chat/completions", Kind: schema.KindChat,
			Model: fmt.Sprintf("model-%d", r.IntN(models)), Instance: "127.0.0.1:9997",
			UserID: fmt.Sprintf("user-%02d", r.IntN(users)), UserSource: schema.UserExplicit,
			Status: 200, InputTokens: in, OutputTokens: o, TotalTokens: in + o, UsageSource: schema.UsageReported,
			InputText: strings.Repeat("héllo ", r.IntN(1000)), OutputText: "ok",
			Input: json.RawMessage(`[{"role":"user","content":"hi"}]`), Output: json.RawMessage(`{"role":"assistant"}`),
			Metadata: map[string]json.RawMessage{"team": json.RawMessage(`"a"`)}, Tags: []string{"x", "y"},
			Source: "test",
		}
		if r.IntN(10) == 0 {
			c.Status, c.Error = 500, "upstream error"
		}
		if r.IntN(3) > 0 {
			ttft := r.Int64N(lat + 1)
			ft := start.Add(time.Duration(ttft) * time.Millisecond)
			c.TTFTMS, c.FirstTokenTime, c.Stream = &ttft, &ft, true
		}
		if r.IntN(4) > 0 {
			cost := float64(in)*0.0000015 + float64(o)*0.000002
			c.CostUSD = &cost
		}
		out[i] = c
	}
	return out
}

type usageKey struct {
	bucket      time.Time
	model, user string
}

// groundTruth computes what Usage must return, in Go.
func groundTruth(calls []schema.Call, from, to time.Time, g callsdb.GroupBy) []callsdb.UsageRow {
	type acc struct {
		row       callsdb.UsageRow
		lat, ttft []float64
	}
	groups := map[usageKey]*acc{}
	for i := range calls {
		c := &calls[i]
		st := c.StartTime.UTC().Truncate(time.Second)
		if st.Before(from) || !st.Before(to) {
			continue
		}
		var k usageKey
		switch g.Bucket {
		case callsdb.BucketHour:
			k.bucket = st.Truncate(time.Hour)
		case callsdb.BucketDay:
			k.bucket = time.Date(st.Year(), st.Month(), st.Day(), 0, 0, 0, 0, time.UTC)
		}
		if g.Model {
			k.model = c.Model
		}
		if g.User {
			k.user = c.UserID
		}
		a := groups[k]
		if a == nil {
			a = &acc{row: callsdb.UsageRow{Bucket: k.bucket, Model: k.model, UserID: k.user}}
			groups[k] = a
		}
		a.row.Calls++
		if c.Status >= 400 || c.Error != "" {
			a.row.Errors++
		}
		a.row.InputTokens += c.InputTokens
		a.row.OutputTokens += c.OutputTokens
		a.row.TotalTokens += c.TotalTokens
		if c.CostUSD != nil {
			a.row.CostUSD += *c.CostUSD
		}
		a.lat = append(a.lat, float64(c.LatencyMS))
		if c.TTFTMS != nil {
			a.row.TTFTCalls++
			a.ttft = append(a.ttft, float64(*c.TTFTMS))
		}
	}
	out := make([]callsdb.UsageRow, 0, len(groups))
	for _, a := range groups {
		a.row.LatencyMS = exactQuantiles(a.lat)
		if len(a.ttft) > 0 {
			a.row.TTFTMS = exactQuantiles(a.ttft)
		}
		out = append(out, a.row)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.Bucket.Equal(b.Bucket) {
			return a.Bucket.Before(b.Bucket)
		}
		if a.Model != b.Model {
			return a.Model < b.Model
		}
		return a.UserID < b.UserID
	})
	return out
}

// exactQuantiles mirrors ClickHouse quantileExact: element floor(level*n) of the sorted values.
func exactQuantiles(v []float64) callsdb.Quantiles {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	at := func(l float64) float64 { return s[min(int(l*float64(len(s))), len(s)-1)] }
	return callsdb.Quantiles{P50: at(0.5), P95: at(0.95), P99: at(0.99)}
}

// checkUsage compares every grouping of Usage with the ground truth: counts,
// tokens exactly; cost to 1e-9 relative (float sums depend on order);
// quantiles within 1%.
func checkUsage(t testing.TB, conn driver.Conn, db string, calls []schema.Call, from, to time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	defer func() { t.Logf("usage checks [%s, %s): %s", from, to, time.Since(t0).Round(time.Millisecond)) }()
	for _, g := range callsdb.AllGroupings() {
		got, err := callsdb.Usage(ctx, conn, db, from, to, g)
		if err != nil {
			t.Fatal(err)
		}
		want := groundTruth(calls, from, to, g)
		if err := diffUsage(got, want); err != nil {
			t.Fatalf("usage %s: %v", g, err)
		}
	}
}

func diffUsage(got, want []callsdb.UsageRow) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d rows, want %d", len(got), len(want))
	}
	near := func(a, b, rel float64) bool {
		return math.Abs(a-b) <= rel*math.Max(math.Abs(a), math.Abs(b))+1e-12
	}
	nearQ := func(a, b callsdb.Quantiles) bool {
		return near(a.P50, b.P50, 0.01) && near(a.P95, b.P95, 0.01) && near(a.P99, b.P99, 0.01)
	}
	for i := range want {
		g, w := got[i], want[i]
		if !g.Bucket.Equal(w.Bucket) || g.Model != w.Model || g.UserID != w.UserID ||
			g.Calls != w.Calls || g.Errors != w.Errors || g.InputTokens != w.InputTokens ||
			g.OutputTokens != w.OutputTokens || g.TotalTokens != w.TotalTokens || g.TTFTCalls != w.TTFTCalls ||
			!near(g.CostUSD, w.CostUSD, 1e-9) || !nearQ(g.LatencyMS, w.LatencyMS) || !nearQ(g.TTFTMS, w.TTFTMS) {
			return fmt.Errorf("row %d:\n got  %+v\n want %+v", i, g, w)
		}
	}
	return nil
}
