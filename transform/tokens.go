package transform

import (
	"fmt"
	"path"
	"strings"
	"sync"
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
	c, err := newCachedCodec(tc)
	if err != nil {
		return nil, err
	}
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

// cachedCodec counts tokens without the library's regexp: splitter cuts
// the text into the pre-tokenizer's pieces; a piece that is a vocabulary
// entry is one token (most words are); other pieces are byte-pair encoded
// (bpeCount), and the counts of short ones are remembered, since rare words,
// identifiers and numbers recur across calls. The result equals the
// library's Count for every input (TestSplitterMatchesLibrary,
// TestTokenCountMatchesLibrary, FuzzTokenCount).
type cachedCodec struct {
	lib    tokenizer.Codec
	split  splitter
	ranks  *ranks
	shards [64]segShard
}

type segShard struct {
	mu sync.RWMutex
	m  map[string]int32
}

const (
	maxCachedSegment = 32      // bytes
	maxShardEntries  = 1 << 12 // per shard; a full shard starts over
)

func newCachedCodec(c tokenizer.Codec) (*cachedCodec, error) {
	// the vocabulary is read from an instance of its own, dropped after
	vocab, err := tokenizer.Get(tokenizer.Encoding(c.GetName()))
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", c.GetName(), err)
	}
	r, err := loadRanks(vocab)
	if err != nil {
		return nil, err
	}
	cc := &cachedCodec{lib: c, split: splitter{o200k: c.GetName() == string(tokenizer.O200kBase)}, ranks: r}
	for i := range cc.shards {
		cc.shards[i].m = make(map[string]int32)
	}
	return cc, nil
}

func (c *cachedCodec) count(text string) int64 {
	var total int64
	for i := 0; i < len(text); {
		e := c.split.next(text, i)
		if e == i {
			// No alternative matches here (U+007F): the library's regexp
			// skips the code point, so it yields no token.
			_, w := utf8.DecodeRuneInString(text[i:])
			i += w
			continue
		}
		total += c.piece(text[i:e])
		i = e
	}
	return total
}

func (c *cachedCodec) piece(p string) int64 {
	if _, ok := c.ranks.get(p); ok {
		return 1
	}
	if len(p) > maxScanPiece {
		// The library re-splits a whole piece into itself, so its Count is
		// the piece's BPE, with its O(n log n) merge for long pieces.
		return c.direct(p)
	}
	if len(p) > maxCachedSegment {
		return int64(c.ranks.bpeCount(p))
	}
	sh := c.shard(p)
	sh.mu.RLock()
	n, ok := sh.m[p]
	sh.mu.RUnlock()
	if ok {
		return int64(n)
	}
	v := c.ranks.bpeCount(p)
	sh.mu.Lock()
	if len(sh.m) >= maxShardEntries {
		clear(sh.m)
	}
	sh.m[strings.Clone(p)] = int32(v)
	sh.mu.Unlock()
	return int64(v)
}

func (c *cachedCodec) shard(s string) *segShard {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return &c.shards[h%uint32(len(c.shards))]
}

// direct is the library's own count of s.
func (c *cachedCodec) direct(s string) int64 {
	n, err := c.lib.Count(s)
	if err != nil {
		// Only ErrorModeStrict returns errors; fall back to a byte estimate.
		return int64(len(s)+3) / 4
	}
	return int64(n)
}

// clearCache forgets every remembered piece count.
func (c *cachedCodec) clearCache() {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		clear(sh.m)
		sh.mu.Unlock()
	}
}
