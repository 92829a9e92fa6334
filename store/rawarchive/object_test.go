package rawarchive

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

func TestKeyRoundTrip(t *testing.T) {
	h := time.Date(2026, 11, 26, 20, 0, 0, 0, time.UTC)
	key := DataKey("raw/v1", h, 17, 123456)
	if want := "raw/v1/dt=2026-11-26/hh=20/00000000000000000017-00000000000000123456.ndjson.zst"; key != want {
		t.Fatalf("key %s, want %s", key, want)
	}
	o, err := ParseKey("raw/v1/", key)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Hour.Equal(h) || o.FirstSeq != 17 || o.LastSeq != 123456 {
		t.Fatalf("parsed %+v", o)
	}
	for _, bad := range []string{
		"other/dt=2026-11-26/hh=20/1-2.ndjson.zst",
		"raw/v1/dt=2026-11-26/hh=24/1-2.ndjson.zst",
		"raw/v1/dt=2026-13-26/hh=20/1-2.ndjson.zst",
		"raw/v1/dt=2026-11-26/hh=20/5-2.ndjson.zst",
		"raw/v1/dt=2026-11-26/hh=20/1-2.manifest.json",
	} {
		if _, err := ParseKey("raw/v1", bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

func TestBuilderRoundTrip(t *testing.T) {
	h := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	opened := time.Now()
	b, err := NewBuilder("p", "S", "default", h.Add(17*time.Minute), opened)
	if err != nil {
		t.Fatal(err)
	}
	seqs := []uint64{10, 11, 12, 20, 21, 5}
	var want bytes.Buffer
	for i, seq := range seqs {
		line := fmt.Appendf(nil, `{"id":"c%d","x":%q}`, i, strings.Repeat("y", i*100))
		start := h.Add(time.Duration(i) * time.Minute)
		if i == 3 {
			start = time.Time{} // undecodable: not part of the time range
		}
		if err := b.Add(seq, line, start); err != nil {
			t.Fatal(err)
		}
		want.Write(line)
		want.WriteByte('\n')
	}
	if err := b.Add(99, []byte("a\nb"), time.Time{}); err == nil {
		t.Fatal("a line with a line break was accepted")
	}
	built, err := b.Finish(FlushAge, opened.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	m := built.Manifest
	if m.Key != DataKey("p", h, 5, 21) || built.ManifestKey != ManifestKey("p", h, 5, 21) {
		t.Fatalf("keys %s %s", m.Key, built.ManifestKey)
	}
	sum := sha256.Sum256(want.Bytes())
	if m.Count != len(seqs) || m.Bytes != int64(want.Len()) || m.SHA256 != hex.EncodeToString(sum[:]) || m.Flush != FlushAge {
		t.Fatalf("meta %+v", m.Meta)
	}
	if !m.MinStart.Equal(h) || !m.MaxStart.Equal(h.Add(5*time.Minute)) {
		t.Fatalf("time range %s..%s", m.MinStart, m.MaxStart)
	}
	if got := fmt.Sprint(m.Seqs); got != "[[10 3] [20 2] [5 1]]" {
		t.Fatalf("runs %s", got)
	}
	if got := fmt.Sprint(m.Sequences()); got != fmt.Sprint(seqs) {
		t.Fatalf("sequences %s, want %v", got, seqs)
	}
	for _, s := range seqs {
		if !m.Contains(s) {
			t.Errorf("Contains(%d) false", s)
		}
	}
	if m.Contains(13) || m.Contains(4) {
		t.Error("Contains reports a sequence that is not in the object")
	}
	d, err := zstd.NewReader(bytes.NewReader(built.Data))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var got bytes.Buffer
	if err := ReadLines(d, func(l []byte) error { got.Write(l); got.WriteByte('\n'); return nil }); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatal("decompressed lines differ from the input")
	}
	back, err := parseUserMetadata(h, m.userMetadata())
	if err != nil {
		t.Fatal(err)
	}
	if back.Count != m.Count || back.SHA256 != m.SHA256 || !back.MinStart.Equal(m.MinStart) || back.FirstSeq != 5 || back.LastSeq != 21 {
		t.Fatalf("user metadata round trip: %+v, want %+v", back, m.Meta)
	}
}

func TestBuilderDeterministic(t *testing.T) {
	build := func() []byte {
		b, err := NewBuilder("p", "S", "default", time.Unix(0, 0), time.Unix(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5000 {
			if err := b.Add(uint64(i+1), fmt.Appendf(nil, `{"id":"%d","v":"%x"}`, i, i*7919), time.Unix(int64(i), 0)); err != nil {
				t.Fatal(err)
			}
		}
		built, err := b.Finish(FlushSize, time.Unix(1, 0))
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Clone(built.Data)
	}
	if !bytes.Equal(build(), build()) {
		t.Fatal("the same lines compress to different bytes: a rebuilt object would not match")
	}
}

func TestReadLinesLong(t *testing.T) {
	long := strings.Repeat("z", 3<<20)
	in := "a\n" + long + "\n\nb"
	var got []string
	if err := ReadLines(strings.NewReader(in), func(l []byte) error { got = append(got, string(l)); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0] != "a" || got[1] != long || got[2] != "b" {
		t.Fatalf("got %d lines", len(got))
	}
}

func TestStorableLine(t *testing.T) {
	if l, err := StorableLine([]byte(`{"a":1}`)); err != nil || string(l) != `{"a":1}` {
		t.Fatalf("%s %v", l, err)
	}
	if l, err := StorableLine([]byte("{\n \"a\": \"x y\"\n}")); err != nil || string(l) != `{"a":"x y"}` {
		t.Fatalf("%s %v", l, err)
	}
	if _, err := StorableLine([]byte("not json\nat all")); err == nil || !strings.Contains(err.Error(), "line break") {
		t.Fatalf("err %v", err)
	}
}
