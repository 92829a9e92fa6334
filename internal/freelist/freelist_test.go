package freelist

import "testing"

// A list hands back what was put, up to its capacity, and drops the rest;
// the zero List keeps nothing and never blocks.
func TestList(t *testing.T) {
	l := New[int](2)
	if _, ok := l.Get(); ok {
		t.Fatal("a new list gave a value")
	}
	l.Put(1)
	l.Put(2)
	l.Put(3) // full: dropped
	got := map[int]bool{}
	for {
		v, ok := l.Get()
		if !ok {
			break
		}
		got[v] = true
	}
	if len(got) != 2 || !got[1] || !got[2] {
		t.Fatalf("got %v, want 1 and 2", got)
	}
	var zero List[int]
	zero.Put(4)
	if _, ok := zero.Get(); ok {
		t.Fatal("the zero list kept a value")
	}
}
