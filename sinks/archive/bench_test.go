package archive

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/rawarchive"
)

// benchLines are ~1 KB chat events: JSON structure, a prompt and an answer in
// words (compressible like real text), ids and times that differ per line.
func benchLines(n int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	words := []string{"the", "model", "answer", "question", "please", "summarize", "tokens", "user", "data", "pipeline",
		"archive", "stream", "call", "latency", "cost", "hour", "replay", "export", "quick", "brown", "fox"}
	text := func(k int) string {
		b := make([]byte, 0, k*7)
		for range k {
			b = append(b, words[r.IntN(len(words))]...)
			b = append(b, ' ')
		}
		return string(b)
	}
	base := time.Date(2026, 11, 26, 20, 0, 0, 0, time.UTC)
	out := make([][]byte, n)
	for i := range out {
		start := base.Add(time.Duration(r.Int64N(int64(time.Hour))))
		out[i] = fmt.Appendf(nil, `{"id":"call-%08d-%x","start_time":%q,"end_time":%q,"endpoint":"/v1/chat/completions","model":"qwen2.5-%db","user":"user-%d","status":200,`+
			`"request":{"messages":[{"role":"user","content":%q}]},"response":{"choices":[{"message":{"role":"assistant","content":%q}}]},"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
			i, r.Uint64(), start.Format(time.RFC3339Nano), start.Add(time.Duration(r.IntN(4000))*time.Millisecond).Format(time.RFC3339Nano),
			r.IntN(4)*7, r.IntN(100), text(60), text(70), r.IntN(900), r.IntN(900), r.IntN(1800))
	}
	return out
}

// BenchmarkBuild is the CPU side of the archive sink per event: decode the
// start time, compress, hash. Report with -cpu 1 for per-CPU-second numbers:
//
//	go test ./sinks/archive -run '^$' -bench Build -cpu 1 -benchmem
func BenchmarkBuild(b *testing.B) {
	for _, level := range []string{"fastest", "default"} {
		b.Run(level, func(b *testing.B) {
			lines := benchLines(20000)
			var size int64
			for _, l := range lines {
				size += int64(len(l)) + 1
			}
			b.SetBytes(size / int64(len(lines)))
			bl, _ := rawarchive.NewBuilder("p", "S", level, time.Now(), time.Now())
			var raw, comp int64
			b.ResetTimer()
			cpu0 := cpuSeconds()
			for i := range b.N {
				line := lines[i%len(lines)]
				start, ok := schema.StartTime(line)
				if !ok {
					b.Fatal("no start time")
				}
				if err := bl.Add(uint64(i+1), line, start); err != nil {
					b.Fatal(err)
				}
				if bl.Bytes() >= 64<<20 || i == b.N-1 {
					built, err := bl.Finish(rawarchive.FlushSize, time.Now())
					if err != nil {
						b.Fatal(err)
					}
					raw, comp = raw+built.Manifest.Bytes, comp+int64(len(built.Data))
					bl, _ = rawarchive.NewBuilder("p", "S", level, time.Now(), time.Now())
				}
			}
			b.ReportMetric(float64(comp)/float64(raw), "compressed/raw")
			b.ReportMetric(float64(size/int64(len(lines)))*float64(b.N)/1e6/(cpuSeconds()-cpu0), "MB/cpu-s")
		})
	}
}

// cpuSeconds is the user+system CPU time of this process: the machine is
// shared, so throughput per CPU-second is the comparable number.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
