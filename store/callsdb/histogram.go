package callsdb

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
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

// histogramLevels are the levels weighedBucketsSQL passes to
// quantilesExactWeightedArray so that it picks quantileExact's ranks. For n calls
// quantileExact (and Quantiles of exact reads) take the element at index
// floor(level*n) of the sorted values; quantilesExactWeighted takes the first
// value whose running count reaches ceil(level'*n). The two agree when
// ceil(level'*n) = floor(level*n)+1, which level' = level + 5e-15 gives for
// every n below 2^40 (in float64, as both servers compute it): the fraction
// of 0.5n, 0.95n and 0.99n is 0 or at least 0.01 below the next integer,
// and 5e-15*n stays under that while it is well above float64's rounding.
// TestHistogramLevelsPickExactRanks checks it.
const histogramLevels = "0.500000000000005, 0.950000000000005, 0.990000000000005"

// weighedBucketsSQL is the buckets holding p50/p95/p99 of the (bucket,
// count) pairs of array columns b and c over a group's rows.
func weighedBucketsSQL(b, c string) string {
	return "quantilesExactWeightedArray(" + histogramLevels + ")(" + b + ", " + c + ")"
}

// histogramQuantiles is p50/p95/p99 from the bucket indexes
// weighedBucketsSQL returns (HistogramValue of each); zero unless there
// are three.
func histogramQuantiles(b []uint16) Quantiles {
	if len(b) != 3 {
		return Quantiles{}
	}
	return Quantiles{P50: HistogramValue(b[0]), P95: HistogramValue(b[1]), P99: HistogramValue(b[2])}
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

// histMaxBucket is the largest bucket index HistogramBucket returns.
var histMaxBucket = HistogramBucket(histMaxValue)

// histogramMerger adds up the histograms of a group's rows as usageRollupSQL
// returns them: the text of one bucket array and one count array per row,
// "[b,b,...][c,c,...]" repeated (counts may be negative: a subtracted row).
// It keeps a dense count per bucket index, reused from group to group.
type histogramMerger struct {
	counts  []int64
	touched []uint16
}

// parse merges text into one Histogram, buckets ascending, dropping buckets
// whose counts add up to zero. A count below zero after the merge, a
// bucket out of range or text of another shape is an error.
func (m *histogramMerger) parse(text string) (Histogram, error) {
	if m.counts == nil {
		m.counts = make([]int64, int(histMaxBucket)+1)
	}
	for _, b := range m.touched { // left by a failed parse
		m.counts[b] = 0
	}
	m.touched = m.touched[:0]
	var buckets []uint16
	for pos := 0; pos < len(text); {
		var err error
		buckets = buckets[:0]
		if pos, err = histArray(text, pos, func(v int64) error {
			if v < 0 || v > int64(histMaxBucket) {
				return fmt.Errorf("bucket %d out of range [0, %d]", v, histMaxBucket)
			}
			buckets = append(buckets, uint16(v))
			return nil
		}); err != nil {
			return Histogram{}, err
		}
		i := 0
		if pos, err = histArray(text, pos, func(c int64) error {
			if i >= len(buckets) {
				return fmt.Errorf("more counts than buckets (%d)", len(buckets))
			}
			b := buckets[i]
			i++
			if m.counts[b] == 0 {
				m.touched = append(m.touched, b)
			}
			m.counts[b] += c
			return nil
		}); err != nil {
			return Histogram{}, err
		}
		if i != len(buckets) {
			return Histogram{}, fmt.Errorf("%d counts for %d buckets", i, len(buckets))
		}
	}
	slices.Sort(m.touched)
	var h Histogram
	for _, b := range m.touched {
		c := m.counts[b]
		m.counts[b] = 0
		switch {
		case c < 0:
			m.touched = m.touched[:0]
			clear(m.counts)
			return Histogram{}, fmt.Errorf("bucket %d sums to %d calls, below zero", b, c)
		case c > 0:
			h.Buckets = append(h.Buckets, b)
			h.Counts = append(h.Counts, uint64(c))
		}
	}
	m.touched = m.touched[:0]
	return h, nil
}

// histArray reads the array text "[v,v,...]" at text[pos:], passing each
// value to f, and returns the position after its ']'.
func histArray(text string, pos int, f func(int64) error) (int, error) {
	if pos >= len(text) || text[pos] != '[' {
		return 0, fmt.Errorf("histogram text: want '[' at byte %d", pos)
	}
	pos++
	if pos < len(text) && text[pos] == ']' {
		return pos + 1, nil
	}
	for {
		neg := pos < len(text) && text[pos] == '-'
		if neg {
			pos++
		}
		start := pos
		var v int64
		for pos < len(text) && text[pos] >= '0' && text[pos] <= '9' {
			if v > (math.MaxInt64-9)/10 {
				return 0, fmt.Errorf("histogram text: number at byte %d overflows", start)
			}
			v = v*10 + int64(text[pos]-'0')
			pos++
		}
		if pos == start {
			return 0, fmt.Errorf("histogram text: want a number at byte %d", pos)
		}
		if neg {
			v = -v
		}
		if err := f(v); err != nil {
			return 0, fmt.Errorf("histogram text at byte %d: %w", start, err)
		}
		if pos >= len(text) {
			return 0, fmt.Errorf("histogram text: unterminated array")
		}
		switch text[pos] {
		case ',':
			pos++
		case ']':
			return pos + 1, nil
		default:
			return 0, fmt.Errorf("histogram text: want ',' or ']' at byte %d, got %q", pos, text[pos])
		}
	}
}
