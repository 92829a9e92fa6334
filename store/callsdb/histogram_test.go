package callsdb

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

func TestHistogramBucketsAreContiguousAndOrdered(t *testing.T) {
	prev := HistogramBucket(0)
	for v := int64(1); v < 1<<20; v++ {
		b := HistogramBucket(v)
		if b != prev && b != prev+1 {
			t.Fatalf("bucket of %d is %d after %d: buckets must be contiguous", v, b, prev)
		}
		lo := HistogramValue(b)
		if rel := math.Abs(lo-float64(v)) / float64(v); rel > HistogramRelativeError {
			t.Fatalf("value %d reported as %v: relative error %v > %v", v, lo, rel, HistogramRelativeError)
		}
		prev = b
	}
	if HistogramBucket(-5) != 0 {
		t.Fatalf("negative values clamp to bucket 0")
	}
	if HistogramBucket(math.MaxInt64) != HistogramBucket(histMaxValue) {
		t.Fatalf("values beyond 2^40 clamp to the last bucket")
	}
	for v := int64(0); v < histExactBelow; v++ {
		if HistogramValue(HistogramBucket(v)) != float64(v) {
			t.Fatalf("%d ms must be exact", v)
		}
	}
}

// exactQuantile mirrors ClickHouse quantileExact.
func exactQuantile(sorted []int64, level float64) float64 {
	return float64(sorted[min(int(level*float64(len(sorted))), len(sorted)-1)])
}

func TestHistogramQuantilesWithinBound(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 200; trial++ {
		n := 1 + r.IntN(5000)
		vals := make([]int64, n)
		for i := range vals {
			switch trial % 3 {
			case 0: // log-normal latencies around 800 ms
				vals[i] = int64(math.Exp(r.NormFloat64()*1.2 + 6.7))
			case 1: // uniform wide range
				vals[i] = r.Int64N(600000)
			default: // small values, exact region included
				vals[i] = r.Int64N(300)
			}
		}
		counts := map[uint16]uint64{}
		for _, v := range vals {
			counts[HistogramBucket(v)]++
		}
		var h Histogram
		for b := range counts {
			h.Buckets = append(h.Buckets, b)
		}
		sort.Slice(h.Buckets, func(i, j int) bool { return h.Buckets[i] < h.Buckets[j] })
		for _, b := range h.Buckets {
			h.Counts = append(h.Counts, counts[b])
		}
		sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
		got := h.Quantiles()
		for _, c := range []struct {
			level float64
			got   float64
		}{{0.5, got.P50}, {0.95, got.P95}, {0.99, got.P99}} {
			want := exactQuantile(vals, c.level)
			if want == 0 {
				if c.got != 0 {
					t.Fatalf("trial %d p%v: got %v, want exactly 0", trial, c.level*100, c.got)
				}
				continue
			}
			if rel := math.Abs(c.got-want) / want; rel > HistogramRelativeError {
				t.Fatalf("trial %d p%v: got %v, exact %v: relative error %.5f > %.5f", trial, c.level*100, c.got, want, rel, HistogramRelativeError)
			}
		}
	}
	if (Histogram{}).Quantiles() != (Quantiles{}) {
		t.Fatal("empty histogram must give zero quantiles")
	}
}
