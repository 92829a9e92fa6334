package callsdb

import (
	"fmt"
	"math"
	"math/bits"
)

// Latency and TTFT distributions in the sealed rollups are log-linear
// histograms over whole milliseconds, mergeable by adding counts per bucket
// (sumMap in ClickHouse):
//
//   - values 0..127 have a bucket each (exact);
//   - from 128 on, every power of two [2^e, 2^(e+1)) is split into 64 equal
//     buckets of width 2^(e-6).
//
// A quantile read from the histogram is the middle of the bucket holding the
// rank quantileExact would pick, so its relative error is at most
// (width/2)/lower bound = 1/128 ≈ 0.79 % (HistogramRelativeError); below
// 128 ms it is exact. Values are clamped to [0, 2^40) ms (35 years), which
// keeps the bucket index a UInt16 and the SQL form exact in float64.
const (
	histExactBelow = 128
	histSubBuckets = 64
	histMaxValue   = 1<<40 - 1
	// HistogramRelativeError bounds |reported-exact|/exact of a histogram
	// quantile (values of 128 ms and more; smaller ones are exact).
	HistogramRelativeError = 1.0 / 128
)

// HistogramBucket is the bucket index of v milliseconds.
func HistogramBucket(v int64) uint16 {
	if v < histExactBelow {
		return uint16(max(v, 0))
	}
	if v > histMaxValue {
		v = histMaxValue
	}
	e := bits.Len64(uint64(v)) - 1 // 7..39
	sub := (v >> (e - 6)) & (histSubBuckets - 1)
	return uint16(histExactBelow + (e-7)*histSubBuckets + int(sub))
}

// HistogramValue is the value a quantile falling in bucket b reports: the
// middle of the whole milliseconds the bucket holds.
func HistogramValue(b uint16) float64 {
	if b < histExactBelow {
		return float64(b)
	}
	i := int(b) - histExactBelow
	e := 7 + i/histSubBuckets
	width := int64(1) << (e - 6)
	lo := int64(histSubBuckets+i%histSubBuckets) * width
	return float64(lo) + float64(width-1)/2
}

// histogramBucketSQL is HistogramBucket as a ClickHouse expression over the
// Int64 expression v (18.16 and 26.x). floor(log2(x)) is exact below 2^40.
func histogramBucketSQL(v string) string {
	x := fmt.Sprintf("least(greatest(toInt64(%s), toInt64(0)), toInt64(%d))", v, int64(histMaxValue))
	e := "toInt64(floor(log2(" + x + ")))"
	return fmt.Sprintf("toUInt16(if(%[1]s < %[2]d, %[1]s, %[2]d + (%[3]s - 7) * %[4]d + bitAnd(bitShiftRight(%[1]s, %[3]s - 6), %[5]d)))",
		x, histExactBelow, e, histSubBuckets, histSubBuckets-1)
}

// Histogram is a merged histogram: count per bucket index.
type Histogram struct {
	Buckets []uint16 // ascending, as sumMap returns them
	Counts  []uint64
}

// Quantiles returns p50/p95/p99 with quantileExact's ranks (element
// floor(level*n) of the sorted values), each reported as HistogramValue of
// its bucket. Zero when the histogram is empty.
func (h Histogram) Quantiles() Quantiles {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	if n == 0 {
		return Quantiles{}
	}
	at := func(level float64) float64 {
		rank := min(uint64(math.Floor(level*float64(n))), n-1)
		var seen uint64
		for i, c := range h.Counts {
			seen += c
			if rank < seen {
				return HistogramValue(h.Buckets[i])
			}
		}
		return HistogramValue(h.Buckets[len(h.Buckets)-1])
	}
	return Quantiles{P50: at(0.5), P95: at(0.95), P99: at(0.99)}
}
