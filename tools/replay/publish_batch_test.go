package replay

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestSegmentKeepsCopies(t *testing.T) {
	var s segment
	s.reset(10)
	line := make([]byte, 0, 64)
	var want [][]byte
	for i := range 1000 { // enough for buf to be reallocated several times
		line = fmt.Appendf(line[:0], `{"id":"c%d"}`, i)
		s.add(line, fmt.Sprintf("m%d", i), int64(11+i))
		want = append(want, bytes.Clone(line))
		line = append(line[:0], "overwritten by the next line of the reader"...)
	}
	if len(s.msgs) != 1000 || s.end != 10 {
		t.Fatalf("%d msgs, end %d", len(s.msgs), s.end)
	}
	for i, m := range s.msgs {
		if got := s.data(m); !bytes.Equal(got, want[i]) || m.line != int64(11+i) || m.msgID != fmt.Sprintf("m%d", i) {
			t.Fatalf("msg %d: %q line %d id %s", i, got, m.line, m.msgID)
		}
	}
	// a payload handed out earlier must not change when the segment grows
	first := s.data(s.msgs[0])
	for i := range 5000 {
		s.add([]byte("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), "x", int64(i))
	}
	if !bytes.Equal(first, want[0]) {
		t.Fatalf("first payload changed to %q", first)
	}
	// capacity of data is its length: appending to it cannot reach the next call
	if d := s.data(s.msgs[1]); cap(d) != len(d) {
		t.Fatalf("data cap %d > len %d", cap(d), len(d))
	}
	s.last, s.stopped = true, true
	s.reset(42)
	if len(s.msgs) != 0 || s.size() != 0 || s.end != 42 || s.last || s.stopped {
		t.Fatalf("reset left %+v", s)
	}
}

func TestBatchStatusKeepsFirstFailure(t *testing.T) {
	var st batchStatus
	if st.failure() != nil {
		t.Fatal("fresh status reports a failure")
	}
	gap, later := errors.New("gap: expected 7, got 9"), errors.New("err frame")
	st.report(gap)
	st.report(later)
	if !errors.Is(st.failure(), gap) {
		t.Fatalf("failure %v, want the first one reported", st.failure())
	}
}
