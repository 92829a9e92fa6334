package capture

import (
	"math/rand/v2"
	"regexp"
	"testing"
)

// The default masks' filters may only rule out text the mask cannot match:
// on texts built from the bytes the masks care about, whenever a mask
// matches, its filter must say the match is possible, and its string and
// []byte forms agree.
func TestDefaultMaskFiltersNeverMissAMatch(t *testing.T) {
	alphabet := []byte("0123456789 -_.()+@skprxfapieyKEY\tabcZ9é\n")
	rng := rand.New(rand.NewPCG(1, 2))
	res := make([]*regexp.Regexp, len(DefaultMasks))
	for i, m := range DefaultMasks {
		res[i] = regexp.MustCompile(m)
	}
	for n := 0; n < 20000; n++ {
		b := make([]byte, rng.IntN(96))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		s := string(b)
		for i, m := range DefaultMasks {
			f := defaultMaskFilters[m]
			if f.bytes(b) != f.str(s) {
				t.Fatalf("filter %d on %q: []byte and string forms disagree", i, s)
			}
			if res[i].MatchString(s) && !f.str(s) {
				t.Fatalf("mask %d matches %q but its filter rules it out", i, s)
			}
		}
	}
}

// hasDigit finds a digit in any byte of a word, whatever the other bytes.
func TestHasDigitWord(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := 0; n < 200000; n++ {
		var b [8]byte
		for i := range b {
			b[i] = byte(rng.IntN(256))
			if rng.IntN(4) == 0 {
				b[i] = "/09:\x00\xb0\xb9\xff"[rng.IntN(8)] // the edges of the range
			}
		}
		want := false
		for _, c := range b {
			want = want || (c >= '0' && c <= '9')
		}
		if got := hasDigit(load8(b[:], 0)); got != want {
			t.Fatalf("hasDigit(% x) = %v", b, got)
		}
	}
}
