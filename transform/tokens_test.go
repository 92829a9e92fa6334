package transform

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2/v2"
)

// The library's split patterns, verbatim (codec/o200k_base.go and
// codec/cl100k_base.go of github.com/tiktoken-go/tokenizer): compiling the
// same text selects the same generated matcher the library runs.
var libPatterns = map[string]string{
	"o200k_base":  `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
	"cl100k_base": `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
}

// libPieces returns the matches of the library's split regexp in text, as
// [start, end) byte offsets.
func libPieces(t testing.TB, enc, text string) [][2]int {
	re := regexp2.MustCompile(libPatterns[enc], regexp2.None)
	var out [][2]int
	m, err := re.FindStringMatch(text)
	for ; m != nil && err == nil; m, err = re.FindNextMatch(m) {
		s, n := m.ByteRange()
		out = append(out, [2]int{s, s + n})
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func ourPieces(sp splitter, text string) [][2]int {
	var out [][2]int
	for i := 0; i < len(text); {
		e := sp.next(text, i)
		if e == i {
			_, w := utf8.DecodeRuneInString(text[i:])
			i += w
			continue
		}
		out = append(out, [2]int{i, e})
		i = e
	}
	return out
}

// checkText fails unless the splitter cuts text like the library's regexp
// and the count equals the library's Count, under both encodings.
func checkText(t testing.TB, text string) {
	t.Helper()
	checkPieces(t, text)
	for _, enc := range Encodings {
		c, err := codecFor(enc)
		if err != nil {
			t.Fatal(err)
		}
		want, err := c.lib.Count(text)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second count may come from the piece cache
			if got := c.count(text); got != int64(want) {
				t.Fatalf("%s: %q: got %d tokens, library says %d", enc, text, got, want)
			}
		}
	}
}

// checkPieces fails unless the splitter cuts text like the library's regexp.
func checkPieces(t testing.TB, text string) {
	t.Helper()
	if !utf8.ValidString(text) { // regexp2 reports the offsets of invalid bytes differently
		return
	}
	for _, enc := range Encodings {
		c, err := codecFor(enc)
		if err != nil {
			t.Fatal(err)
		}
		want, got := libPieces(t, enc, text), ourPieces(c.split, text)
		if !slices.Equal(want, got) {
			t.Fatalf("%s: %q: pieces\n got %s\nwant %s", enc, text, showPieces(text, got), showPieces(text, want))
		}
	}
}

func showPieces(text string, ps [][2]int) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%q ", text[p[0]:p[1]])
	}
	return b.String()
}

// The split patterns see a code point only through its Unicode
// properties: letter, number, space, Lu, Lt, Ll, Lm, Lo, M (beyond the
// ASCII characters they name). So every code point below U+0800 (ASCII,
// Latin, Greek, Cyrillic, Hebrew, Arabic...) is checked, and above it up to
// 120 code points, spread over the planes, of every combination of those
// properties that occurs; each in contexts that exercise every alternative
// (letters of either case, digits, spaces, line breaks, contractions,
// punctuation). Counts over the pieces are compared by the tests below.
func TestSplitterMatchesLibrary(t *testing.T) {
	type props [9]bool
	propsOf := func(r rune) props {
		return props{unicode.IsLetter(r), unicode.Is(unicode.N, r), unicode.IsSpace(r), unicode.Is(unicode.Lu, r),
			unicode.Is(unicode.Lt, r), unicode.Is(unicode.Ll, r), unicode.Is(unicode.Lm, r), unicode.Is(unicode.Lo, r),
			unicode.Is(unicode.M, r)}
	}
	var runes []rune
	seen := map[props]int{}
	for r := rune(0); r <= utf8.MaxRune; r++ {
		if !utf8.ValidRune(r) {
			continue
		}
		if r < 0x800 {
			runes = append(runes, r)
			continue
		}
		// every 251st code point of a combination, so samples spread out
		p := propsOf(r)
		if n := seen[p]; n < 120*251 {
			if n%251 == 0 {
				runes = append(runes, r)
			}
			seen[p] = n + 1
		}
	}
	t.Logf("%d code points, %d property combinations above U+0800", len(runes), len(seen))
	var b strings.Builder
	for i, r := range runes {
		s := string(r)
		b.WriteString("x" + s + "X" + s + s + " " + s + "1" + s + "'s" + s + "\n" + s + "  !")
		if b.Len() > 1<<12 || i == len(runes)-1 {
			checkPieces(t, b.String())
			b.Reset()
		}
	}
}

// tokenPieces are fragments that generated texts are built from: every
// Unicode category the patterns tell apart, numbers, contractions (with the
// long s), whitespace runs, emoji, CJK, DEL, invalid UTF-8 and long runs.
var tokenPieces = []string{"the", "The", "THE", " ", "  ", "   ", "\n", "\r\n", "\n\n", " \n ", "\t", "\u00a0", "\u2028",
	"\u3000", "\v", "\f", "\x85", "it's", "I'M", "we'll", "don't", "'re", "'Ve", "'LL", "'d", "'ſ", "Iſ", "'",
	"a", "b", "Z", "123", "4567890", "١٢٣", "Ⅻ", "½", "²", "1,000", "3.14", ".", ",", "!!", "...", "(x)", "func()",
	"{", "}", "//", "/", "/\n", "é", "naïve", "café", "Ünïcödé", "世界", "日本語", "。", "한국어", "😀", "👍🏽",
	"👨‍👩‍👧", "🇩🇪", "مرحبا", "Привет", "ΑΒΓ", "ǅ", "ǅa", "ʰ", "ˆ", "x\u0301", "\u0301", "ab\u0300c", "ﬁ",
	"\"", "-", "_", "Ab", "aB", "ABC", "CamelCase", "snake_case", "HTTPServer", "iPhone", "hello", "world",
	"#", "$5", "e-mail", "https://x.y/z?q=1", "a.b", "x1", "1x", "O'Neil", "rock'n'roll", "界。", "ü\n", "\r",
	"(", ")", "\t\t", "0x1F", "v1.2.3", "<|endoftext|>", "\x7f", "a\x7fb", "\x00", "\x1f", "\ufffd", "\xff", "\xe4\xb8",
	strings.Repeat("a", 150), strings.Repeat(" ", 140), strings.Repeat("=", 130), strings.Repeat("é", 70),
	strings.Repeat("\n", 40) + " ", strings.Repeat("ab1", 50), "\U0001D400\U0001D41A", "\U00020000"}

// Generated texts: random sequences of tokenPieces, with and without spaces.
func TestTokenCountMatchesLibrary(t *testing.T) {
	rng := uint64(1)
	next := func(n int) int {
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		return int(rng % uint64(n))
	}
	for range 600 {
		var b strings.Builder
		for range 1 + next(30) {
			b.WriteString(tokenPieces[next(len(tokenPieces))])
			if next(3) == 0 {
				b.WriteByte(' ')
			}
		}
		checkText(t, b.String())
	}
}

// Fixture texts: the chat bodies of the normalize fixtures and about 50 KB
// of the Go distribution's prose and code (as in the benchmark).
func TestTokenCountFixtures(t *testing.T) {
	checkText(t, string(benchChatEvent(1)))
	checkText(t, "")
	n := 0
	for _, text := range realisticCorpus(t) {
		if n += len(text); n > 48<<10 {
			break
		}
		checkText(t, text)
	}
}

// FuzzTokenCount compares the splitter with the library's regexp and the
// count with the library's Count on arbitrary text.
func FuzzTokenCount(f *testing.F) {
	for _, p := range tokenPieces {
		f.Add(p)
	}
	f.Add("Hello, world! It's 2026; naïve café — 世界 😀\r\n\tdon't   stop\n\n")
	if data, err := os.ReadFile("bench_test.go"); err == nil {
		f.Add(string(data[:2048]))
	}
	f.Fuzz(func(t *testing.T, text string) {
		checkText(t, text)
	})
}
