package callsdb

import (
	"fmt"
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
		if w := histogramQuantiles(weightedQuantiles(h.Buckets, h.Counts)); w != got {
			t.Fatalf("trial %d: quantilesExactWeighted at histogramLevels picks %+v, the exact ranks %+v", trial, w, got)
		}
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

// The text merge adds every row's counts per bucket, negative counts
// included (subtracted rows), drops buckets that cancel out and returns
// buckets ascending; the merger's state does not leak into the next group.
func TestHistogramMergerAddsRows(t *testing.T) {
	var m histogramMerger
	h, err := m.parse("[3,130,7][2,5,1][7,3][4,1][][][130][-5]")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(h.Buckets, h.Counts) != "[3 7] [3 5]" {
		t.Fatalf("merged %v %v, want buckets [3 7] counts [3 5]", h.Buckets, h.Counts)
	}
	h, err = m.parse("[7][1]")
	if err != nil || fmt.Sprint(h.Buckets, h.Counts) != "[7] [1]" {
		t.Fatalf("next group: %v %v %v, want [7] [1] alone", h.Buckets, h.Counts, err)
	}
	if h, err = m.parse(""); err != nil || len(h.Buckets) != 0 {
		t.Fatalf("empty text: %v %v", h, err)
	}
}

// The merge agrees with adding counts in a map, over random rows.
func TestHistogramMergerMatchesMapSum(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var m histogramMerger
	for trial := 0; trial < 100; trial++ {
		want := map[uint16]uint64{}
		var text strings.Builder
		for row := 0; row < 1+r.IntN(20); row++ {
			seen := map[uint16]bool{}
			var bs, cs []string
			for k := 0; k < r.IntN(30); k++ {
				b := HistogramBucket(r.Int64N(1 << 25))
				if seen[b] {
					continue
				}
				seen[b] = true
				c := 1 + r.Uint64N(1000)
				want[b] += c
				bs, cs = append(bs, fmt.Sprint(b)), append(cs, fmt.Sprint(c))
			}
			fmt.Fprintf(&text, "[%s][%s]", strings.Join(bs, ","), strings.Join(cs, ","))
		}
		h, err := m.parse(text.String())
		if err != nil {
			t.Fatal(err)
		}
		if len(h.Buckets) != len(want) || !sort.SliceIsSorted(h.Buckets, func(i, j int) bool { return h.Buckets[i] < h.Buckets[j] }) {
			t.Fatalf("trial %d: %d buckets (sorted %v), want %d", trial, len(h.Buckets), sort.SliceIsSorted(h.Buckets, func(i, j int) bool { return h.Buckets[i] < h.Buckets[j] }), len(want))
		}
		for i, b := range h.Buckets {
			if h.Counts[i] != want[b] {
				t.Fatalf("trial %d: bucket %d has %d, want %d", trial, b, h.Counts[i], want[b])
			}
		}
	}
}

// Text of another shape, a bucket out of range or a count that stays
// below zero is an error naming what is wrong, and the next parse starts clean.
func TestHistogramMergerRejectsBadText(t *testing.T) {
	var m histogramMerger
	for text, want := range map[string]string{
		"[1,2][5]":                  "1 counts for 2 buckets",
		"[1][5,6]":                  "more counts than buckets",
		"[1][5":                     "unterminated",
		"[1]":                       "want '['",
		"[1;2][5,6]":                "want ',' or ']'",
		"[70000][1]":                "out of range",
		"[4][2][4][-3]":             "below zero",
		"[x][1]":                    "want a number",
		"[1][99999999999999999999]": "overflows",
	} {
		if _, err := m.parse(text); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parse(%q) = %v, want an error with %q", text, err, want)
		}
	}
	if h, err := m.parse("[4][2]"); err != nil || fmt.Sprint(h.Buckets, h.Counts) != "[4] [2]" {
		t.Fatalf("after errors: %v %v %v", h.Buckets, h.Counts, err)
	}
}
