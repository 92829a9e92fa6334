package transform

import (
	"fmt"
	"hash/maphash"
	"math"

	"github.com/tiktoken-go/tokenizer"
)

// ranks is a BPE vocabulary: token bytes → rank (merge priority). Tokens
// of up to 7 bytes, nearly all lookups, live in an open-addressing table
// keyed by the packed bytes (one cache miss per lookup, against two or
// three for a Go map of 200,000 strings); longer ones in a second table
// whose slots point into one byte arena. Neither holds a pointer: the
// vocabulary stays live for the life of the process, and as a map of
// strings it was 100,000 objects the garbage collector marked in every
// cycle.
type ranks struct {
	pairs *[1 << 16]uint32 // two-byte tokens, dense (noPair: none): BPE's first merges
	short []shortRank      // len is a power of two
	shift uint             // 64 - log2(len(short))
	long  longRanks
}

// longRanks is an open-addressing table of tokens longer than
// maxShortToken bytes; a slot's token is arena[off:off+n] (n 0: empty).
type longRanks struct {
	seed  maphash.Seed
	slots []longRank // len is a power of two, at most half full
	arena []byte
}

type longRank struct {
	off  uint32
	n    uint32
	rank uint32
}

func newLongRanks(tokens int) longRanks {
	size := 1
	for size < 2*tokens {
		size <<= 1
	}
	return longRanks{seed: maphash.MakeSeed(), slots: make([]longRank, size)}
}

func (l *longRanks) put(s string, rank uint32) {
	mask := uint64(len(l.slots) - 1)
	for i := maphash.String(l.seed, s) & mask; ; i = (i + 1) & mask {
		e := &l.slots[i]
		if e.n == 0 {
			e.off, e.n, e.rank = uint32(len(l.arena)), uint32(len(s)), rank
			l.arena = append(l.arena, s...)
			return
		}
		if int(e.n) == len(s) && string(l.arena[e.off:e.off+e.n]) == s {
			e.rank = rank
			return
		}
	}
}

func (l *longRanks) get(s string) (uint32, bool) {
	mask := uint64(len(l.slots) - 1)
	for i := maphash.String(l.seed, s) & mask; ; i = (i + 1) & mask {
		e := l.slots[i]
		if e.n == 0 {
			return 0, false
		}
		if int(e.n) == len(s) && string(l.arena[e.off:e.off+e.n]) == s {
			return e.rank, true
		}
	}
}

// shortRank is a slot of the short table; key 0 marks an empty slot (a
// packed key holds the length, at least 1, in its top byte).
type shortRank struct {
	key  uint64
	rank uint32
}

const maxShortToken = 7

// pack returns the key of a token of 1 to maxShortToken bytes.
func pack(s string) uint64 {
	k := uint64(len(s)) << 56
	for i := 0; i < len(s); i++ {
		k |= uint64(s[i]) << (8 * i)
	}
	return k
}

func (r *ranks) slot(key uint64) uint64 { return (key * 0x9e3779b97f4a7c15) >> r.shift }

func (r *ranks) put(s string, rank uint32) {
	if len(s) > maxShortToken {
		r.long.put(s, rank)
		return
	}
	key := pack(s)
	mask := uint64(len(r.short) - 1)
	for i := r.slot(key); ; i = (i + 1) & mask {
		if e := &r.short[i]; e.key == 0 || e.key == key {
			e.key, e.rank = key, rank
			return
		}
	}
}

const noPair = math.MaxUint32

// get returns the rank of token s.
func (r *ranks) get(s string) (uint32, bool) {
	if len(s) == 2 {
		v := r.pairs[uint16(s[0])<<8|uint16(s[1])]
		return v, v != noPair
	}
	if len(s) > maxShortToken {
		return r.long.get(s)
	}
	key := pack(s)
	mask := uint64(len(r.short) - 1)
	for i := r.slot(key); ; i = (i + 1) & mask {
		e := r.short[i]
		if e.key == key {
			return e.rank, true
		}
		if e.key == 0 {
			return 0, false
		}
	}
}

// loadRanks reads the vocabulary of c through its public Decode, one token
// id at a time. Ids are dense from 0; the special tokens above the last
// ordinary one are not part of the merge vocabulary and are not read
// (a run of missing ids ends the scan). Decode leaves a reverse vocabulary
// (a string per token) in c for good: pass an instance read for this alone.
func loadRanks(c tokenizer.Codec) (*ranks, error) {
	var toks []string
	id := []uint{0}
	for n, misses := uint(0), 0; misses < 1024; n++ {
		id[0] = n
		s, err := c.Decode(id)
		if err != nil || s == "" {
			misses++
			toks = append(toks, "")
			continue
		}
		misses = 0
		toks = append(toks, s)
	}
	if len(toks) < 2000 {
		return nil, fmt.Errorf("encoding %s: vocabulary has only %d tokens", c.GetName(), len(toks)-1024)
	}
	// at most 1/2 full: probes stay short
	bits := 1
	for 1<<bits < 2*len(toks) {
		bits++
	}
	long := 0
	for _, s := range toks {
		if len(s) > maxShortToken {
			long++
		}
	}
	r := &ranks{pairs: new([1 << 16]uint32), short: make([]shortRank, 1<<bits), shift: uint(64 - bits),
		long: newLongRanks(long)}
	for i := range r.pairs {
		r.pairs[i] = noPair
	}
	for n, s := range toks {
		switch {
		case len(s) == 2:
			r.pairs[uint16(s[0])<<8|uint16(s[1])] = uint32(n)
		case s != "":
			r.put(s, uint32(n))
		}
	}
	return r, nil
}

// maxScanPiece is the longest piece counted by bpeCount; longer pieces go to
// the library, whose heap-based merge is O(n log n).
const maxScanPiece = 128

// bpeCount returns the number of tokens byte-pair encoding turns piece into:
// the library's mergePairsScan (repeatedly merge the leftmost adjacent pair
// of parts whose concatenation has the lowest rank), on stack arrays.
// len(piece) must be between 1 and maxScanPiece.
func (r *ranks) bpeCount(piece string) int {
	if len(piece) == 1 {
		return 1
	}
	var offs [maxScanPiece + 1]int32 // part boundaries
	var rk [maxScanPiece + 1]uint32  // rank of merging part i with part i+1
	n := len(piece) + 1              // boundaries
	rankOf := func(i, skip int) uint32 {
		if i+skip+2 < n {
			if v, ok := r.get(piece[offs[i]:offs[i+skip+2]]); ok {
				return v
			}
		}
		return math.MaxUint32
	}
	for i := range n {
		offs[i] = int32(i)
		rk[i] = math.MaxUint32
	}
	for i := 0; i < n-2; i++ {
		rk[i] = rankOf(i, 0)
	}
	for n > 1 {
		minRank, minIdx := uint32(math.MaxUint32), 0
		for i := 0; i < n-1; i++ {
			if rk[i] < minRank {
				minRank, minIdx = rk[i], i
			}
		}
		if minRank == math.MaxUint32 {
			break
		}
		rk[minIdx] = rankOf(minIdx, 1)
		if minIdx > 0 {
			rk[minIdx-1] = rankOf(minIdx-1, 1)
		}
		copy(offs[minIdx+1:n-1], offs[minIdx+2:n])
		copy(rk[minIdx+1:n-1], rk[minIdx+2:n])
		n--
	}
	return n - 1
}
