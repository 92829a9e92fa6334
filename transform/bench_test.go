package transform

import (
	"github.com/callpipe/callpipe/schema/capture"

	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
)

// benchChatEvent is a ~1 KB chat event with reported usage, like the proxy emits.
func benchChatEvent(i int) []byte {
	return event(fmt.Sprintf("bench-%08d", i), "/v1/chat/completions", "qwen2.5-instruct",
		`{"model":"qwen2.5-instruct","messages":[{"role":"system","content":"You are a helpful assistant that answers briefly and precisely."},`+
			`{"role":"user","content":"Summarise the plot of a short story about a lighthouse keeper who finds a message in a bottle, in two sentences, please."}],`+
			`"temperature":0.7,"top_p":0.95,"max_tokens":256,"stream":false}`,
		`{"id":"chatcmpl-8f2c","object":"chat.completion","created":1714564800,"model":"qwen2.5-instruct","choices":[{"index":0,"message":{"role":"assistant",`+
			`"content":"A lonely lighthouse keeper discovers a bottle holding a decades-old plea for help from a girl on a distant island. He traces its writer across the coast and, finding her now grown, gains an unlikely friend."},`+
			`"finish_reason":"stop"}],"usage":{"prompt_tokens":52,"completion_tokens":41,"total_tokens":93}}`,
		map[string]any{"usage": map[string]int{"prompt_tokens": 52, "completion_tokens": 41, "total_tokens": 93},
			"first_token_time": "2026-05-01T12:00:00.3Z", "instance": "node-1:9997", "user": "alice",
			"api_key_hash": strings.Repeat("ab", 32), "api_key_prefix": "xf-abcd"})
}

// BenchmarkNormalizeChat1KB measures the normalize stage's CPU work per event
// (decode + validate + extract + user + cost + default privacy masks +
// encode of the record), one core:
//
//	go test ./transform -run '^$' -bench NormalizeChat1KB -cpu 1 -benchmem
func BenchmarkNormalizeChat1KB(b *testing.B) {
	n := testNormalizer(b)
	p, err := capture.New(capture.Options{Masks: capture.DefaultMasks}) // the default: full payloads, default masks
	if err != nil {
		b.Fatal(err)
	}
	n.Privacy = p
	if os.Getenv("CALLPIPE_BENCH_NO_PRIVACY") != "" {
		n.Privacy = nil
	}
	events := make([][]byte, 1024)
	size := 0
	for i := range events {
		events[i] = benchChatEvent(i)
		size += len(events[i])
	}
	b.SetBytes(int64(size / len(events)))
	ctx := context.Background()
	var buf []byte
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	defer func() { cpu.report(b, float64(b.N), "events") }()
	for i := 0; b.Loop(); i++ {
		c, err := n.Normalize(ctx, events[i%len(events)])
		if err != nil {
			b.Fatal(err)
		}
		buf = schema.AppendCall(buf[:0], c)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// cpuClock measures the process's CPU time (user+system, all threads, GC
// included): on a shared, loaded machine wall time overstates the cost per
// core, CPU time does not.
type cpuClock struct{ start time.Duration }

func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuClock { return cpuClock{cpuNow()} }

func (c cpuClock) report(b *testing.B, units float64, unit string) {
	if d := (cpuNow() - c.start).Seconds(); d > 0 {
		b.ReportMetric(units/d, unit+"/cpu-s")
	}
}

// BenchmarkTokenizerO200k measures estimation throughput over mixed English
// prose and code, one core, on one text counted over and over (the piece
// cache is warm; see BenchmarkTokenizerUnseenText for text never seen):
//
//	go test ./transform -run '^$' -bench Tokenizer -cpu 1
func BenchmarkTokenizerO200k(b *testing.B) {
	tok := testTokenizer(b)
	text := strings.Repeat("The quick brown fox jumps over the lazy dog; tokenizers split text into byte-pair merges. "+
		"func main() { fmt.Println(\"hello, 世界\") } // 1234567890 résumé naïve café\n", 64)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	cpu := startCPU()
	defer func() { cpu.report(b, float64(b.N)*float64(len(text))/1e6, "MB") }()
	for b.Loop() {
		if tok.Count("qwen", text) == 0 {
			b.Fatal("no tokens")
		}
	}
}

func BenchmarkTokenizerCl100k(b *testing.B) {
	tok := testTokenizer(b)
	text := strings.Repeat("The quick brown fox jumps over the lazy dog; tokenizers split text into byte-pair merges. "+
		"func main() { fmt.Println(\"hello, 世界\") } // 1234567890 résumé naïve café\n", 64)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	cpu := startCPU()
	defer func() { cpu.report(b, float64(b.N)*float64(len(text))/1e6, "MB") }()
	for b.Loop() {
		if tok.Count("gpt-4", text) == 0 {
			b.Fatal("no tokens")
		}
	}
}

// BenchmarkTokenizerO200kCold counts text whose words are new every time
// (random letters): no word is a vocabulary entry, each needs several BPE
// merges and the piece cache never helps. The floor for unusual text.
func BenchmarkTokenizerO200kCold(b *testing.B) {
	tok := testTokenizer(b)
	rng := uint64(7)
	word := func() string {
		var w [7]byte
		for i := range w {
			rng ^= rng << 13
			rng ^= rng >> 7
			rng ^= rng << 17
			w[i] = 'a' + byte(rng%26)
		}
		return string(w[:])
	}
	// 256 texts of 1,500 random words: more distinct words than the cache
	// holds, so cycling through them keeps missing.
	texts := make([]string, 256)
	for i := range texts {
		var sb strings.Builder
		for range 1500 {
			sb.WriteString(word())
			sb.WriteString(" ")
		}
		texts[i] = sb.String()
	}
	b.SetBytes(int64(len(texts[0])))
	b.ResetTimer()
	count := func(s string) { tok.Count("qwen", s) }
	if os.Getenv("CALLPIPE_BENCH_LIBRARY_ONLY") != "" { // the same text without the cache, for comparison
		count = func(s string) { tok.codec("qwen").direct(s) }
	}
	cpu := startCPU()
	defer func() { cpu.report(b, float64(b.N)*float64(len(texts[0]))/1e6, "MB") }()
	for i := 0; b.Loop(); i++ {
		count(texts[i%len(texts)])
	}
}

// BenchmarkTokenizerO200kLibrary is the library's Count on whole texts, for
// comparison (no segment cache).
func BenchmarkTokenizerO200kLibrary(b *testing.B) {
	tok := testTokenizer(b)
	text := strings.Repeat("The quick brown fox jumps over the lazy dog; tokenizers split text into byte-pair merges. "+
		"func main() { fmt.Println(\"hello, 世界\") } // 1234567890 résumé naïve café\n", 64)
	b.SetBytes(int64(len(text)))
	c := tok.codec("qwen")
	cpu := startCPU()
	defer func() { cpu.report(b, float64(b.N)*float64(len(text))/1e6, "MB") }()
	for b.Loop() {
		c.direct(text)
	}
}

// realisticCorpus is about 2 MB of English prose, HTML, Markdown and Go code
// from the Go distribution (its specification, memory model, docs and
// net/http sources), split into chat-sized texts of about 4 KB.
func realisticCorpus(b testing.TB) []string {
	root := runtime.GOROOT()
	var files []string
	for _, pat := range []string{"doc/*.html", "doc/*.md", "src/net/http/*.go"} {
		m, _ := filepath.Glob(filepath.Join(root, pat))
		files = append(files, m...)
	}
	var texts []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		for s := string(data); len(s) > 0; {
			n := min(len(s), 4096)
			for n < len(s) && s[n]&0xc0 == 0x80 { // keep code points whole
				n++
			}
			texts = append(texts, s[:n])
			s = s[n:]
		}
	}
	if len(texts) < 100 {
		b.Skipf("no corpus under GOROOT %s", root)
	}
	return texts
}

// BenchmarkTokenizerUnseenText counts a corpus of realistic text with an
// empty piece cache at the start of every pass, so nothing was seen before
// the pass (the cache only helps where the corpus repeats itself, as a
// stream of calls does); one op is the whole corpus:
//
//	go test ./transform -run '^$' -bench 'Tokenizer(Unseen|Library)' -cpu 1
func BenchmarkTokenizerUnseenText(b *testing.B) {
	for _, enc := range Encodings {
		b.Run(enc, func(b *testing.B) {
			texts := realisticCorpus(b)
			c, err := codecFor(enc)
			if err != nil {
				b.Fatal(err)
			}
			size := 0
			for _, t := range texts {
				size += len(t)
			}
			b.SetBytes(int64(size))
			cpu := startCPU()
			defer func() { cpu.report(b, float64(b.N)*float64(size)/1e6, "MB") }()
			for b.Loop() {
				c.clearCache()
				for _, t := range texts {
					c.count(t)
				}
			}
		})
	}
}

// BenchmarkTokenizerLibraryUnseenText is the library's own Count over the
// same corpus, for comparison.
func BenchmarkTokenizerLibraryUnseenText(b *testing.B) {
	texts := realisticCorpus(b)
	c, err := codecFor(Encodings[0])
	if err != nil {
		b.Fatal(err)
	}
	size := 0
	for _, t := range texts {
		size += len(t)
	}
	b.SetBytes(int64(size))
	cpu := startCPU()
	defer func() { cpu.report(b, float64(b.N)*float64(size)/1e6, "MB") }()
	for b.Loop() {
		for _, t := range texts {
			c.direct(t)
		}
	}
}
