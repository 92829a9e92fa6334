package bench

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

func TestQuantilesAreNearestRank(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	q := quantiles(lat)
	want := Quantiles{Count: 100, P50MS: 50, P90MS: 90, P99MS: 99, MaxMS: 100}
	if q != want {
		t.Errorf("1..100 ms: %+v, want %+v", q, want)
	}
	// 10 samples: p90 is the 9th (0.9·10 must not round up to the 10th),
	// p99 the 10th.
	ten := []time.Duration{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	for i := range ten {
		ten[i] *= time.Millisecond
	}
	if q := quantiles(ten); q.P50MS != 5 || q.P90MS != 9 || q.P99MS != 10 || q.MaxMS != 10 {
		t.Errorf("1..10 ms: %+v, want p50 5, p90 9, p99 10, max 10", q)
	}
	if q := quantiles([]time.Duration{1500 * time.Microsecond}); q.P50MS != 1.5 || q.P99MS != 1.5 || q.Count != 1 {
		t.Errorf("one sample of 1.5 ms: %+v", q)
	}
	if q := quantiles(nil); q != (Quantiles{}) {
		t.Errorf("no samples: %+v, want zero", q)
	}
}

func TestAddedIsQuantileByQuantile(t *testing.T) {
	direct := Quantiles{Count: 10, P50MS: 0.2, P90MS: 0.3, P99MS: 1, MaxMS: 5}
	proxied := Quantiles{Count: 9, P50MS: 0.7, P90MS: 1.3, P99MS: 1.5, MaxMS: 4}
	got := added(direct, proxied)
	want := Quantiles{Count: 9, P50MS: 0.5, P90MS: 1, P99MS: 0.5, MaxMS: -1}
	const eps = 1e-12
	if got.Count != want.Count || abs(got.P50MS-want.P50MS) > eps || abs(got.P90MS-want.P90MS) > eps ||
		abs(got.P99MS-want.P99MS) > eps || abs(got.MaxMS-want.MaxMS) > eps {
		t.Errorf("added %+v, want %+v", got, want)
	}
}

func abs(x float64) float64 { return max(x, -x) }

// A result counts as late when it started more than 1 ms after its slot in
// the constant pacer's schedule (hit n at (n+1)/rate), and as an error when
// it failed or was not 2xx; only answered requests give latencies.
func TestSliceStatsCountsLateStartsAndErrors(t *testing.T) {
	began := time.Unix(1000, 0)
	const rate = 500 // a slot every 2 ms
	var st sliceStats
	for _, r := range []*vegeta.Result{
		{Seq: 0, Timestamp: began.Add(2 * time.Millisecond), Code: 200, Latency: time.Millisecond},                          // on time
		{Seq: 1, Timestamp: began.Add(4*time.Millisecond + 900*time.Microsecond), Code: 204, Latency: 3 * time.Millisecond}, // 0.9 ms late: on time
		{Seq: 2, Timestamp: began.Add(8 * time.Millisecond), Code: 200, Latency: 2 * time.Millisecond},                      // 2 ms late
		{Seq: 3, Timestamp: began.Add(8 * time.Millisecond), Code: 500, Error: "500 Internal Server Error"},                 // error
		{Seq: 4, Timestamp: began.Add(10 * time.Millisecond), Error: "connection refused"},                                  // error
	} {
		st.add(r, began, rate)
	}
	if st.sent != 5 || st.late != 1 || st.errors != 2 {
		t.Errorf("sent %d late %d errors %d, want 5, 1, 2", st.sent, st.late, st.errors)
	}
	if len(st.latencies) != 3 || st.latencies[2] != 2*time.Millisecond {
		t.Errorf("latencies %v, want those of the three answered requests", st.latencies)
	}
	var all sliceStats
	all.merge(st)
	all.merge(st)
	if all.sent != 10 || all.late != 2 || all.errors != 4 || len(all.latencies) != 6 {
		t.Errorf("merged twice: %+v", all)
	}
}

// Every path runs for the whole duration, in slices, and the order rotates
// so that no path always runs right after the same other one.
func TestTurnsRotateAndCoverTheDuration(t *testing.T) {
	paths := []*loadPath{{name: "a"}, {name: "b"}, {name: "c"}}
	var order []string
	ran := map[string]time.Duration{}
	turns(paths, 5*time.Second, 2*time.Second, func(p *loadPath, d time.Duration) {
		order = append(order, p.name)
		ran[p.name] += d
	})
	want := []string{"a", "b", "c", "b", "c", "a", "c", "a", "b"}
	if len(order) != len(want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("order %v, want %v", order, want)
		}
	}
	for _, p := range paths {
		if ran[p.name] != 5*time.Second {
			t.Errorf("%s ran %s, want 5s", p.name, ran[p.name])
		}
	}
}

// The load generator's count matches what the server saw, request for
// request, and failures are counted as errors, not latencies.
func TestAttackCountsWhatTheServerSaw(t *testing.T) {
	var served, failed atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/embeddings" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "wrong request", http.StatusBadRequest)
			return
		}
		if served.Add(1)%4 == 0 {
			failed.Add(1)
			http.Error(w, "every fourth fails", http.StatusInternalServerError)
			return
		}
		w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	lp := newLoadPath("direct", srv.URL, 2)
	st := lp.attack(200, 200*time.Millisecond)
	if st.sent == 0 || int64(st.sent) != served.Load() {
		t.Fatalf("sent %d, the server saw %d", st.sent, served.Load())
	}
	if int64(st.errors) != failed.Load() || len(st.latencies) != st.sent-st.errors {
		t.Errorf("errors %d (server failed %d), latencies %d of %d", st.errors, failed.Load(), len(st.latencies), st.sent)
	}
	// the connections are kept for the next turn
	before := served.Load()
	st2 := lp.attack(200, 100*time.Millisecond)
	if int64(st2.sent) != served.Load()-before {
		t.Errorf("second turn sent %d, the server saw %d", st2.sent, served.Load()-before)
	}
}

func TestCheckProxyOptions(t *testing.T) {
	base := Options{Events: 0, Size: 1024, Clients: 1, Batch: 1, Sinks: []string{"clickhouse"}}
	if err := base.Check(); err == nil {
		t.Error("--events 0 without --proxy accepted")
	}
	o := base
	o.Proxy = &ProxyOptions{Rate: 500, Clients: 8, Duration: 20 * time.Second, Slice: 2 * time.Second}
	if err := o.Check(); err != nil {
		t.Errorf("--events 0 --proxy: %v", err)
	}
	o.Proxy = &ProxyOptions{Rate: 0, Clients: 8, Duration: 20 * time.Second, Slice: 2 * time.Second}
	if err := o.Check(); err == nil {
		t.Error("--proxy-rate 0 accepted")
	}
	o = base
	o.Events = 500
	o.Proxy = &ProxyOptions{Rate: 500, Clients: 8, Duration: 20 * time.Second, Slice: 2 * time.Second}
	if err := o.Check(); err == nil {
		t.Error("--events 500 accepted")
	}
}

func TestProcCostPerCall(t *testing.T) {
	a := procSample{cpu: 1.0, mallocs: 1000, allocBytes: 1e6}
	b := procSample{cpu: 1.5, mallocs: 6000, allocBytes: 6e6}
	c := procCost(a, b, 1000)
	if abs(c.CPUMicros-500) > 1e-9 || c.Allocs != 5 || c.AllocBytes != 5000 {
		t.Errorf("cost %+v, want 500 µs, 5 allocs, 5000 B per call", c)
	}
	if c := procCost(procSample{cpu: 1, mallocs: -1, allocBytes: -1}, procSample{cpu: 2, mallocs: -1, allocBytes: -1}, 10); c.Allocs != -1 || c.AllocBytes != -1 || c.CPUMicros != 1e5 {
		t.Errorf("without memstats: %+v, want allocations unknown (-1)", c)
	}
}
