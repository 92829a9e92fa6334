package callsdb

import (
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
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

// weightedQuantiles mirrors ClickHouse quantilesExactWeighted at
// histogramLevels over a histogram: the first bucket whose running count
// reaches ceil(level*n).
func weightedQuantiles(buckets []uint16, counts []uint64) []uint16 {
	var n uint64
	for _, c := range counts {
		n += c
	}
	var out []uint16
	for _, l := range strings.Split(histogramLevels, ", ") {
		level, err := strconv.ParseFloat(l, 64)
		if err != nil {
			panic(err)
		}
		threshold := uint64(math.Ceil(float64(n) * level))
		var seen uint64
		i := 0
		for ; i < len(buckets)-1; i++ {
			if seen += counts[i]; seen >= threshold {
				break
			}
		}
		out = append(out, buckets[i])
	}
	return out
}

// ceil(level'*n) = floor(level*n)+1 for every n below 2^40: the weighted
// pick lands on quantileExact's rank.
func TestHistogramLevelsPickExactRanks(t *testing.T) {
	levels := strings.Split(histogramLevels, ", ")
	r := rand.New(rand.NewPCG(3, 4))
	for i, exact := range []float64{0.5, 0.95, 0.99} {
		weighted, err := strconv.ParseFloat(levels[i], 64)
		if err != nil {
			t.Fatal(err)
		}
		check := func(n uint64) {
			if got, want := uint64(math.Ceil(float64(n)*weighted)), uint64(math.Floor(exact*float64(n)))+1; got != want {
				t.Fatalf("level %v, n=%d: weighted threshold %d, exact rank+1 %d", exact, n, got, want)
			}
		}
		for n := uint64(1); n < 2_000_000; n++ {
			check(n)
		}
		for range 2_000_000 {
			check(1 + r.Uint64N(1<<40-1))
		}
	}
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
		var buckets []uint16
		for b := range counts {
			buckets = append(buckets, b)
		}
		sort.Slice(buckets, func(i, j int) bool { return buckets[i] < buckets[j] })
		var bucketCounts []uint64
		for _, b := range buckets {
			bucketCounts = append(bucketCounts, counts[b])
		}
		sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
		got := histogramQuantiles(weightedQuantiles(buckets, bucketCounts))
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
	if histogramQuantiles(nil) != (Quantiles{}) {
		t.Fatal("no quantiles must give zero quantiles")
	}
}
