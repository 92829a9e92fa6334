package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func rec(i int) []byte {
	return []byte(fmt.Sprintf(`{"id":"ev-%04d","pad":"%s"}`, i, strings.Repeat("x", i%37)))
}

func mustOpen(t testing.TB, dir string, o Options) *Spool {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// crash abandons a spool the way a killed process does: no sync, no cursor
// flush beyond what was already written, lock released by the kernel.
func crash(s *Spool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.closeFiles()
}

// reopen closes s ("close") or drops it as a crash would ("crash"), then
// opens dir again.
func reopen(t testing.TB, s *Spool, dir string, o Options, how string) *Spool {
	t.Helper()
	if how == "close" {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	} else {
		crash(s)
	}
	return mustOpen(t, dir, o)
}

func drain(t testing.TB, s *Spool) [][]byte {
	t.Helper()
	var out [][]byte
	for {
		r, err := s.Peek()
		if errors.Is(err, ErrEmpty) {
			return out
		}
		if err != nil {
			t.Fatalf("Peek: %v", err)
		}
		out = append(out, r)
		if err := s.Ack(); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFIFO(t *testing.T) {
	s := mustOpen(t, t.TempDir(), Options{MaxBytes: 1 << 20})
	defer s.Close()
	if _, err := s.Peek(); !errors.Is(err, ErrEmpty) {
		t.Fatalf("Peek on empty: %v", err)
	}
	if err := s.Ack(); !errors.Is(err, ErrNothingPeeked) {
		t.Fatalf("Ack without Peek: %v", err)
	}
	for i := range 100 {
		if err := s.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if s.Len() != 100 {
		t.Fatalf("Len = %d", s.Len())
	}
	// Peek is idempotent until Ack.
	a, _ := s.Peek()
	b, _ := s.Peek()
	if !bytes.Equal(a, b) || !bytes.Equal(a, rec(0)) {
		t.Fatalf("Peek twice: %q %q", a, b)
	}
	got := drain(t, s)
	if len(got) != 100 {
		t.Fatalf("drained %d", len(got))
	}
	for i, g := range got {
		if !bytes.Equal(g, rec(i)) {
			t.Fatalf("record %d = %q", i, g)
		}
	}
	if s.Len() != 0 || s.Size() != 0 {
		t.Fatalf("after drain Len=%d Size=%d", s.Len(), s.Size())
	}
	if err := s.Append(nil); err == nil {
		t.Fatal("empty record accepted")
	}
}

func TestFullAndTooLarge(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, Options{MaxBytes: 4096, SegmentBytes: 1024})
	defer s.Close()
	r := bytes.Repeat([]byte("a"), 100) // 108 bytes on disk
	n := 0
	for {
		err := s.Append(r)
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 4096/108 {
		t.Fatalf("appended %d records before full", n)
	}
	if s.Size() > 4096 {
		t.Fatalf("Size %d over limit", s.Size())
	}
	if err := s.Append(make([]byte, 5000)); !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrFull) {
		t.Fatalf("oversized record: %v", err)
	}
	// Consuming a whole segment frees its space.
	for range 10 {
		if _, err := s.Peek(); err != nil {
			t.Fatal(err)
		}
		if err := s.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Append(r); err != nil {
		t.Fatalf("append after reclaim: %v", err)
	}
	if got := len(drain(t, s)); got != n-10+1 {
		t.Fatalf("drained %d, want %d", got, n-10+1)
	}
}

func TestSegmentsReclaimed(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, Options{MaxBytes: 1 << 20, SegmentBytes: 4096})
	defer s.Close()
	for i := range 500 {
		if err := s.Append(rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(segFiles(t, dir)); n < 5 {
		t.Fatalf("only %d segments", n)
	}
	before := s.Size()
	for range 250 {
		s.Peek()
		s.Ack()
	}
	if s.Size() >= before {
		t.Fatalf("size did not shrink: %d -> %d", before, s.Size())
	}
	drain(t, s)
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files after drain, want 1 empty", n)
	}
	if s.Size() != 0 {
		t.Fatalf("Size after drain = %d", s.Size())
	}
}

func TestReopenResumes(t *testing.T) {
	for _, policy := range []SyncPolicy{SyncAlways, SyncManual} {
		for _, closeHow := range []string{"close", "crash"} {
			t.Run(fmt.Sprintf("sync%d/%s", policy, closeHow), func(t *testing.T) {
				dir := t.TempDir()
				o := Options{MaxBytes: 1 << 20, SegmentBytes: 2048, Sync: policy}
				s := mustOpen(t, dir, o)
				for i := range 60 {
					if err := s.Append(rec(i)); err != nil {
						t.Fatal(err)
					}
				}
				for range 25 {
					s.Peek()
					s.Ack()
				}
				// Peeked but not acknowledged: must come back.
				if r, _ := s.Peek(); !bytes.Equal(r, rec(25)) {
					t.Fatalf("peek = %q", r)
				}
				s = reopen(t, s, dir, o, closeHow)
				defer s.Close()
				if s.Len() != 35 {
					t.Fatalf("Len after reopen = %d, want 35", s.Len())
				}
				if err := s.Append(rec(60)); err != nil {
					t.Fatal(err)
				}
				got := drain(t, s)
				if len(got) != 36 {
					t.Fatalf("got %d records", len(got))
				}
				for i, g := range got {
					if !bytes.Equal(g, rec(25+i)) {
						t.Fatalf("record %d = %q, want %q", i, g, rec(25+i))
					}
				}
			})
		}
	}
}

func TestReopenEmptyStartsFresh(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, Options{MaxBytes: 1 << 20})
	s.Append(rec(1))
	drain(t, s)
	s.Close()
	s = mustOpen(t, dir, Options{MaxBytes: 1 << 20})
	defer s.Close()
	if s.Len() != 0 || s.Size() != 0 {
		t.Fatalf("Len=%d Size=%d", s.Len(), s.Size())
	}
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files", n)
	}
}

// tornTail damages the newest segment after a crash in one of several ways.
func TestTornWrite(t *testing.T) {
	cases := map[string]func(t *testing.T, path string){
		"partial payload": func(t *testing.T, path string) {
			appendBytes(t, path, []byte{200, 0, 0, 0, 1, 2, 3, 4, 'p', 'a', 'r', 't'})
		},
		"partial header": func(t *testing.T, path string) { appendBytes(t, path, []byte{5, 0}) },
		"zero filled":    func(t *testing.T, path string) { appendBytes(t, path, make([]byte, 4096)) },
		"huge length":    func(t *testing.T, path string) { appendBytes(t, path, []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 'x'}) },
		"bad crc in last record": func(t *testing.T, path string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)-2] ^= 0xff
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			o := Options{MaxBytes: 1 << 20}
			s := mustOpen(t, dir, o)
			for i := range 10 {
				if err := s.Append(rec(i)); err != nil {
					t.Fatal(err)
				}
			}
			crash(s)
			files := segFiles(t, dir)
			damage(t, files[len(files)-1])

			s = mustOpen(t, dir, o)
			defer s.Close()
			want := 10
			if name == "bad crc in last record" {
				want = 9
			}
			if st := s.Stats(); st.TruncatedBytes == 0 || st.Records != int64(want) {
				t.Fatalf("stats after recovery: %+v", st)
			}
			if err := s.Append(rec(100)); err != nil {
				t.Fatal(err)
			}
			got := drain(t, s)
			if len(got) != want+1 {
				t.Fatalf("got %d records, want %d", len(got), want+1)
			}
			for i := range want {
				if !bytes.Equal(got[i], rec(i)) {
					t.Fatalf("record %d = %q", i, got[i])
				}
			}
			if !bytes.Equal(got[want], rec(100)) {
				t.Fatalf("appended-after-recovery record = %q", got[want])
			}
		})
	}
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestTornCursorFallsBack(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxBytes: 1 << 20}
	s := mustOpen(t, dir, o)
	for i := range 10 {
		s.Append(rec(i))
	}
	for range 4 {
		s.Peek()
		s.Ack()
	}
	gen := s.gen
	crash(s)
	// Tear the newest slot: the previous one (one Ack older) takes over.
	path := filepath.Join(dir, cursorName)
	b, _ := os.ReadFile(path)
	b[int(gen%2)*slotSize+20] ^= 0xff
	os.WriteFile(path, b, 0o600)

	s = mustOpen(t, dir, o)
	defer s.Close()
	if r, _ := s.Peek(); !bytes.Equal(r, rec(3)) {
		t.Fatalf("after torn cursor Peek = %q, want record 3 again", r)
	}
	if s.Len() != 7 {
		t.Fatalf("Len = %d", s.Len())
	}
}

func TestCursorGarbageRestartsAtOldest(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxBytes: 1 << 20}
	s := mustOpen(t, dir, o)
	for i := range 5 {
		s.Append(rec(i))
	}
	s.Peek()
	s.Ack()
	s.Close()
	os.WriteFile(filepath.Join(dir, cursorName), []byte("garbage"), 0o600)
	s = mustOpen(t, dir, o)
	defer s.Close()
	if got := drain(t, s); len(got) != 5 {
		t.Fatalf("got %d records (at least once: all 5 expected)", len(got))
	}
}

func TestConsumedSegmentLeftByCrashIsRemoved(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxBytes: 1 << 20, SegmentBytes: 1024}
	s := mustOpen(t, dir, o)
	for i := range 100 {
		s.Append(rec(i))
	}
	files := segFiles(t, dir)
	first, _ := os.ReadFile(files[0])
	for range 50 {
		s.Peek()
		s.Ack()
	}
	crash(s)
	// Resurrect a segment the cursor had passed, as if the crash happened
	// between moving the cursor and deleting the file.
	os.WriteFile(files[0], first, 0o600)
	s = mustOpen(t, dir, o)
	defer s.Close()
	got := drain(t, s)
	if len(got) != 50 || !bytes.Equal(got[0], rec(50)) {
		t.Fatalf("got %d records, first %q", len(got), got[0])
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, Options{MaxBytes: 1 << 20})
	if _, err := Open(dir, Options{MaxBytes: 1 << 20}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v", err)
	}
	s.Close()
	s2 := mustOpen(t, dir, Options{MaxBytes: 1 << 20})
	s2.Close()
	if err := s2.Append(rec(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if _, err := s2.Peek(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Peek after Close: %v", err)
	}
}

func TestConcurrentAppendAndConsume(t *testing.T) {
	s := mustOpen(t, t.TempDir(), Options{MaxBytes: 64 << 10, SegmentBytes: 4096, Sync: SyncManual})
	defer s.Close()
	const n = 3000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n; {
			err := s.Append(rec(i))
			if errors.Is(err, ErrFull) {
				continue // consumer frees space
			}
			if err != nil {
				t.Error(err)
				return
			}
			i++
			if i%100 == 0 {
				s.Sync()
			}
		}
	}()
	for i := 0; i < n; {
		r, err := s.Peek()
		if errors.Is(err, ErrEmpty) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r, rec(i)) {
			t.Fatalf("record %d = %q", i, r)
		}
		if err := s.Ack(); err != nil {
			t.Fatal(err)
		}
		i++
	}
	wg.Wait()
}

// FuzzOpenDamaged opens a spool whose segment and cursor files hold arbitrary
// bytes: recovery must never panic, and whatever it delivers must be records
// that were written (or that the fuzzer forged in the tail).
func FuzzOpenDamaged(f *testing.F) {
	f.Add([]byte{}, []byte{}, uint16(0))
	f.Add([]byte{3, 0, 0, 0, 1, 2, 3, 4, 'a', 'b', 'c'}, make([]byte, 64), uint16(5))
	f.Fuzz(func(t *testing.T, tail, cursor []byte, cut uint16) {
		dir := t.TempDir()
		o := Options{MaxBytes: 1 << 20, SegmentBytes: 512, Sync: SyncManual}
		s := mustOpen(t, dir, o)
		valid := map[string]bool{}
		for i := range 20 {
			s.Append(rec(i))
			valid[string(rec(i))] = true
		}
		crash(s)
		files := segFiles(t, dir)
		last := files[len(files)-1]
		b, _ := os.ReadFile(last)
		if int(cut) < len(b) {
			b = b[:cut]
		}
		os.WriteFile(last, append(b, tail...), 0o600)
		if len(cursor) > 0 {
			os.WriteFile(filepath.Join(dir, cursorName), cursor, 0o600)
		}
		s, err := Open(dir, o)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for _, r := range drain(t, s) {
			if !valid[string(r)] && !bytes.Contains(tail, r) {
				t.Fatalf("delivered a record never written: %q", r)
			}
		}
	})
}

// TestPeekNAckN: PeekN returns the oldest records in order, up to n and
// within the oldest segment; peeking again returns the same ones; AckN(k)
// moves the cursor past the first k only, which a reopened spool (after a
// close or a crash) resumes from; all records come out once, in order.
func TestPeekNAckN(t *testing.T) {
	for _, closeHow := range []string{"close", "crash"} {
		t.Run(closeHow, func(t *testing.T) {
			dir := t.TempDir()
			o := Options{MaxBytes: 1 << 20, SegmentBytes: 2048}
			s := mustOpen(t, dir, o)
			if _, err := s.PeekN(8); !errors.Is(err, ErrEmpty) {
				t.Fatalf("PeekN on empty: %v", err)
			}
			if err := s.AckN(1); !errors.Is(err, ErrNothingPeeked) {
				t.Fatalf("AckN without PeekN: %v", err)
			}
			for i := range 60 {
				if err := s.Append(rec(i)); err != nil {
					t.Fatal(err)
				}
			}
			recs, err := s.PeekN(8)
			if err != nil || len(recs) != 8 {
				t.Fatalf("PeekN(8): %d records, %v", len(recs), err)
			}
			again, _ := s.PeekN(3)
			for i := range 8 {
				if !bytes.Equal(recs[i], rec(i)) || (i < 3 && !bytes.Equal(again[i], rec(i))) {
					t.Fatalf("record %d = %q (again %q)", i, recs[i], again)
				}
			}
			if err := s.AckN(4); err == nil {
				t.Fatal("AckN(4) after PeekN(3) accepted")
			}
			recs, _ = s.PeekN(8)
			if err := s.AckN(5); err != nil {
				t.Fatal(err)
			}
			if err := s.AckN(1); !errors.Is(err, ErrNothingPeeked) {
				t.Fatalf("second AckN without PeekN: %v", err)
			}
			if s.Len() != 55 {
				t.Fatalf("Len = %d, want 55", s.Len())
			}
			// a batch never crosses into the next segment
			segRecords := 0
			for {
				recs, err := s.PeekN(1000)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(recs[0], rec(5+segRecords)) {
					t.Fatalf("first of batch %q, want %q", recs[0], rec(5+segRecords))
				}
				if len(recs) == 1000 || len(segFiles(t, dir)) < 2 {
					t.Fatalf("PeekN(1000) returned %d records with %d segments", len(recs), len(segFiles(t, dir)))
				}
				if err := s.AckN(len(recs)); err != nil {
					t.Fatal(err)
				}
				segRecords += len(recs)
				if segRecords >= 20 {
					break
				}
			}
			s = reopen(t, s, dir, o, closeHow)
			defer s.Close()
			got := drain(t, s)
			if len(got) != 55-segRecords {
				t.Fatalf("after reopen %d records, want %d", len(got), 55-segRecords)
			}
			for i, g := range got {
				if !bytes.Equal(g, rec(5+segRecords+i)) {
					t.Fatalf("record %d = %q, want %q", i, g, rec(5+segRecords+i))
				}
			}
		})
	}
}
