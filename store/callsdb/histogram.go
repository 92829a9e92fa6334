package callsdb

import (
	"fmt"
	"math/bits"
)

// Latency and TTFT distributions in the sealed rollups are log-linear
// histograms over whole milliseconds, mergeable by adding counts per bucket:
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

// histogramLevels are the levels usagePercentilesSQL passes to
// quantilesExactWeighted so that it picks quantileExact's ranks. For n calls
// quantileExact (and Quantiles of exact reads) take the element at index
// floor(level*n) of the sorted values; quantilesExactWeighted takes the first
// value whose running count reaches ceil(level'*n). The two agree when
// ceil(level'*n) = floor(level*n)+1, which level' = level + 5e-15 gives for
// every n below 2^40 (in float64, as both servers compute it): the fraction
// of 0.5n, 0.95n and 0.99n is 0 or at least 0.01 below the next integer,
// and 5e-15*n stays under that while it is well above float64's rounding.
// TestHistogramLevelsPickExactRanks checks it.
const histogramLevels = "0.500000000000005, 0.950000000000005, 0.990000000000005"

// histogramQuantiles is p50/p95/p99 from the bucket indexes
// usagePercentilesSQL returns (HistogramValue of each); zero unless there
// are three.
func histogramQuantiles(b []uint16) Quantiles {
	if len(b) != 3 {
		return Quantiles{}
	}
	return Quantiles{P50: HistogramValue(b[0]), P95: HistogramValue(b[1]), P99: HistogramValue(b[2])}
}
