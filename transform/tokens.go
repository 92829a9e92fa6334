package transform

import (
	"fmt"
	"path"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/tiktoken-go/tokenizer"
)

// Encodings accepted for token estimation; the vocabularies are compiled into
// the binary (github.com/tiktoken-go/tokenizer), so counting works offline.
var Encodings = []string{string(tokenizer.O200kBase), string(tokenizer.Cl100kBase)}

// Tokenizer estimates token counts with a byte-level BPE vocabulary, chosen
// per model-name pattern. It is safe for concurrent use.
type Tokenizer struct {
	def   *cachedCodec
	rules []tokRule
}

type tokRule struct {
	pattern string
	codec   *cachedCodec
}

var (
	codecMu sync.Mutex
	codecs  = map[string]*cachedCodec{}
)

func codecFor(enc string) (*cachedCodec, error) {
	codecMu.Lock()
	defer codecMu.Unlock()
	if c, ok := codecs[enc]; ok {
		return c, nil
	}
	ok := false
	for _, e := range Encodings {
		ok = ok || e == enc
	}
	if !ok {
		return nil, fmt.Errorf("unknown encoding %q (allowed: %s)", enc, strings.Join(Encodings, ", "))
	}
	tc, err := tokenizer.Get(tokenizer.Encoding(enc))
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", enc, err)
	}
	c := newCachedCodec(tc)
	codecs[enc] = c
	return c, nil
}

// NewTokenizer builds a Tokenizer with defaultEncoding for every model and
// rules of the form "PATTERN=ENCODING" (PATTERN is a path.Match glob over the
// model name, first match wins).
func NewTokenizer(defaultEncoding string, rules []string) (*Tokenizer, error) {
	if defaultEncoding == "" {
		defaultEncoding = string(tokenizer.O200kBase)
	}
	def, err := codecFor(defaultEncoding)
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{def: def}
	for _, r := range rules {
		pat, enc, ok := strings.Cut(r, "=")
		pat, enc = strings.TrimSpace(pat), strings.TrimSpace(enc)
		if !ok || pat == "" {
			return nil, fmt.Errorf("tokenizer rule %q: want PATTERN=ENCODING", r)
		}
		if _, err := path.Match(pat, ""); err != nil {
			return nil, fmt.Errorf("tokenizer rule %q: bad pattern: %w", r, err)
		}
		c, err := codecFor(enc)
		if err != nil {
			return nil, fmt.Errorf("tokenizer rule %q: %w", r, err)
		}
		t.rules = append(t.rules, tokRule{pattern: pat, codec: c})
	}
	return t, nil
}

func (t *Tokenizer) codec(model string) *cachedCodec {
	m := strings.ToLower(model)
	for _, r := range t.rules {
		if ok, _ := path.Match(r.pattern, m); ok {
			return r.codec
		}
	}
	return t.def
}

// Count returns the number of tokens of text under model's vocabulary.
func (t *Tokenizer) Count(model, text string) int64 {
	if text == "" {
		return 0
	}
	return t.codec(model).count(text)
}

// cachedCodec counts tokens segment by segment, remembering the counts of
// short segments (words, mostly). The text is cut before every ASCII
// character other than a letter or an apostrophe that follows a letter. In
// o200k_base and cl100k_base a letter's pre-tokenizer match always ends
// there: letters are matched only by the letter alternatives, which continue
// only with letters, combining marks or an apostrophe contraction, and the
// split patterns have no look-behind. A new match starts at the cut both in
// the whole text and in the segment, so the matches, and the BPE tokens, of
// the whole text are exactly those of its segments (TestTokenizerSegmentsExact
// checks this against the library on random text).
type cachedCodec struct {
	codec  tokenizer.Codec
	shards [64]segShard
}

type segShard struct {
	mu sync.RWMutex
	m  map[string]int32
}

const (
	maxCachedSegment = 48      // bytes
	maxShardEntries  = 1 << 12 // per shard; a full shard starts over
)

func newCachedCodec(c tokenizer.Codec) *cachedCodec {
	cc := &cachedCodec{codec: c}
	for i := range cc.shards {
		cc.shards[i].m = make(map[string]int32)
	}
	return cc
}

func (c *cachedCodec) count(text string) int64 {
	var total int64
	// Uncached segments are counted one by one (and remembered) until a
	// streak of misses shows the text is mostly new; then they are counted
	// in runs, one library call per run (any run of whole segments is cut at
	// safe points too), remembering only every missStride-th one so that
	// frequent words still get cached.
	const missStride = 32
	runStart, runEnd, misses := -1, -1, 0
	flush := func() {
		if runStart >= 0 {
			total += c.direct(text[runStart:runEnd])
			runStart = -1
		}
	}
	seg := func(a, b int) {
		s := text[a:b]
		if len(s) <= maxCachedSegment {
			if n, ok := c.lookup(s); ok {
				flush()
				total += n
				misses = 0
				return
			}
			misses++
			if misses <= missStride || misses%missStride == 0 {
				flush()
				total += c.store(s)
				return
			}
		}
		if runStart < 0 {
			runStart = a
		}
		runEnd = b
	}
	start := 0
	for i := 1; i < len(text); i++ {
		b := text[i]
		if b >= utf8.RuneSelf || isASCIILetter(b) || b == '\'' {
			continue
		}
		if p := text[i-1]; p < utf8.RuneSelf {
			if !isASCIILetter(p) {
				continue
			}
		} else if r, _ := utf8.DecodeLastRuneInString(text[:i]); !unicode.IsLetter(r) {
			continue
		}
		seg(start, i)
		start = i
	}
	if start < len(text) {
		seg(start, len(text))
	}
	flush()
	return total
}

func isASCIILetter(b byte) bool { return b|0x20 >= 'a' && b|0x20 <= 'z' }

func (c *cachedCodec) shard(s string) *segShard {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return &c.shards[h%uint32(len(c.shards))]
}

func (c *cachedCodec) lookup(s string) (int64, bool) {
	sh := c.shard(s)
	sh.mu.RLock()
	n, ok := sh.m[s]
	sh.mu.RUnlock()
	return int64(n), ok
}

// store counts s and remembers the count.
func (c *cachedCodec) store(s string) int64 {
	v := c.direct(s)
	sh := c.shard(s)
	sh.mu.Lock()
	if len(sh.m) >= maxShardEntries {
		clear(sh.m)
	}
	sh.m[strings.Clone(s)] = int32(v)
	sh.mu.Unlock()
	return v
}

func (c *cachedCodec) direct(s string) int64 {
	n, err := c.codec.Count(s)
	if err != nil {
		// Only ErrorModeStrict returns errors; fall back to a byte estimate.
		return int64(len(s)+3) / 4
	}
	return int64(n)
}
