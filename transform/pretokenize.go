package transform

import (
	"unicode"
	"unicode/utf8"
)

// splitter cuts text into the pieces the library's pre-tokenizer regexp
// would match, without running the regexp (the library's regexp2 engine
// costs most of the counting time). It follows the code regexp2cg generated
// for the o200k_base and cl100k_base patterns in
// github.com/tiktoken-go/tokenizer/codec/regexp.gen.go branch by branch,
// quirks included, because counts must equal the library's:
//
//   - U+007F (DEL) is in no character class of the generated matcher, so no
//     alternative matches it and, like any unmatched character, it yields
//     no token;
//   - in `\s*[\r\n]+` the whitespace loop backs off to the first line break
//     of the run, not the last;
//   - the case-insensitive contractions accept 'ſ' (U+017F) for 's'.
//
// Invalid UTF-8 bytes are classified as U+FFFD (like regexp2's decoding)
// while the pieces keep the original bytes.
//
// TestSplitterMatchesLibrary and FuzzTokenCount compare the results with
// the library on fixtures, generated text and every Unicode code point.
type splitter struct {
	o200k bool // o200k_base pattern; false: cl100k_base
}

// Character classes of the patterns, as bits.
const (
	clL     = 1 << iota // \p{L}
	clN                 // \p{N}
	clSpace             // \s (unicode.IsSpace)
	clUpper             // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
	clLower             // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
	clPre               // [^\r\n\p{L}\p{N}]
	clPunct             // [^\s\p{L}\p{N}]
)

// bmpClass holds the classes of every code point below U+10000.
var bmpClass = func() *[0x10000]uint8 {
	var t [0x10000]uint8
	for r := range rune(0x10000) {
		t[r] = classSlow(r)
	}
	return &t
}()

func classSlow(r rune) uint8 {
	var c uint8
	isL, isN := unicode.IsLetter(r), unicode.Is(unicode.N, r)
	if isL {
		c |= clL
	}
	if isN {
		c |= clN
	}
	sp := unicode.IsSpace(r)
	if sp {
		c |= clSpace
	}
	if unicode.In(r, unicode.Lu, unicode.Lt, unicode.Lm, unicode.Lo, unicode.M) {
		c |= clUpper
	}
	if unicode.In(r, unicode.Ll, unicode.Lm, unicode.Lo, unicode.M) {
		c |= clLower
	}
	// The generated matcher tests ASCII against bitmaps that leave out
	// U+007F, and everything else against the Unicode categories.
	if r < utf8.RuneSelf {
		if r == 0x7f {
			return c
		}
		if !isL && !isN && r != '\r' && r != '\n' {
			c |= clPre
		}
		if !isL && !isN && !sp {
			c |= clPunct
		}
		return c
	}
	if !isL && !isN {
		c |= clPre
		if !sp {
			c |= clPunct
		}
	}
	return c
}

func classOf(r rune) uint8 {
	if r < 0x10000 {
		return bmpClass[r]
	}
	return classSlow(r)
}

// at returns the classes and width of the code point at s[i].
func at(s string, i int) (uint8, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return bmpClass[c], 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	return classOf(r), w
}

// before returns the start of the code point that ends at s[i].
func before(s string, i int) int {
	if s[i-1] < utf8.RuneSelf {
		return i - 1
	}
	_, w := utf8.DecodeLastRuneInString(s[:i])
	return i - w
}

// run returns the end of the longest run of code points in class cl from i.
func run(s string, i int, cl uint8) int {
	for i < len(s) {
		if b := s[i]; b < utf8.RuneSelf {
			if bmpClass[b]&cl == 0 {
				break
			}
			i++
			continue
		}
		c, w := at(s, i)
		if c&cl == 0 {
			break
		}
		i += w
	}
	return i
}

// next returns the end of the piece starting at i, or i when no alternative
// matches there (the regexp then skips that code point).
func (sp splitter) next(s string, i int) int {
	if sp.o200k {
		if e := sp.letters200k(s, i); e > i {
			return e
		}
	} else {
		if e := contraction(s, i); e > i {
			return e
		}
		if e := lettersCl100k(s, i); e > i {
			return e
		}
	}
	// \p{N}{1,3}
	if e := digits(s, i); e > i {
		return e
	}
	// ' ?[^\s\p{L}\p{N}]+' then [\r\n/]* (o200k) or [\r\n]* (cl100k)
	j := i
	if s[j] == ' ' {
		j++
	}
	if e := run(s, j, clPunct); e > j {
		for e < len(s) && (s[e] == '\r' || s[e] == '\n' || sp.o200k && s[e] == '/') {
			e++
		}
		return e
	}
	// \s*[\r\n]+ (the generated matcher backs off to the first line break)
	ws := run(s, i, clSpace)
	if brk := breaks(s, ws); brk > ws {
		return brk
	}
	for k := i; k < ws; k++ {
		if s[k] == '\r' || s[k] == '\n' {
			return breaks(s, k)
		}
	}
	if ws == i {
		return i
	}
	// \s+(?!\S): the run, less its last code point when text follows it
	if ws == len(s) {
		return ws
	}
	if b := before(s, ws); b > i {
		return b
	}
	// \s+
	return ws
}

func breaks(s string, i int) int {
	for i < len(s) && (s[i] == '\r' || s[i] == '\n') {
		i++
	}
	return i
}

// digits matches \p{N}{1,3}.
func digits(s string, i int) int {
	for n := 0; n < 3 && i < len(s); n++ {
		c, w := at(s, i)
		if c&clN == 0 {
			break
		}
		i += w
	}
	return i
}

// letters200k matches the two letter alternatives of o200k_base:
//
//	[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//
// with the backtracking of greedy loops. The optional contraction always
// succeeds, so a loop backs off only when the loop after it matches too little.
func (splitter) letters200k(s string, i int) int {
	c, w := at(s, i)
	starts := [2]int{i, i}
	if c&clPre != 0 {
		starts[0] = i + w // with the optional prefix first, then without
	}
	// First alternative: upper* lower+.
	for k, p := range starts {
		if k == 1 && p == starts[0] {
			break
		}
		up := run(s, p, clUpper)
		for u := up; ; u = before(s, u) {
			if e := run(s, u, clLower); e > u {
				return contraction(s, e)
			}
			if u <= p {
				break
			}
		}
	}
	// Second alternative: upper+ lower*.
	for k, p := range starts {
		if k == 1 && p == starts[0] {
			break
		}
		if up := run(s, p, clUpper); up > p {
			return contraction(s, run(s, up, clLower))
		}
	}
	return i
}

// lettersCl100k matches [^\r\n\p{L}\p{N}]?\p{L}+ (cl100k_base).
func lettersCl100k(s string, i int) int {
	c, w := at(s, i)
	if c&clPre != 0 && i+w < len(s) {
		if e := run(s, i+w, clL); e > i+w {
			return e
		}
	}
	return run(s, i, clL)
}

// contraction returns the end of (?i:'s|'t|'re|'ve|'m|'ll|'d) at i, or i.
func contraction(s string, i int) int {
	if i+1 >= len(s) || s[i] != '\'' {
		return i
	}
	switch s[i+1] {
	case 's', 'S', 't', 'T', 'm', 'M', 'd', 'D':
		return i + 2
	case 'r', 'R', 'v', 'V':
		if i+2 < len(s) && s[i+2]|0x20 == 'e' {
			return i + 3
		}
	case 'l', 'L':
		if i+2 < len(s) && s[i+2]|0x20 == 'l' {
			return i + 3
		}
	case 0xc5: // ſ (U+017F) folds to s
		if i+2 < len(s) && s[i+2] == 0xbf {
			return i + 3
		}
	}
	return i
}
