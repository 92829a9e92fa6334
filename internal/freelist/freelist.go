// Package freelist keeps spare buffers between uses. Unlike a sync.Pool,
// which the garbage collector empties every second cycle (every few
// milliseconds under load, so most gets find it empty), a List keeps what
// it holds until it is taken; it holds at most its capacity, and neither
// Get nor Put ever waits.
package freelist

// List is a bounded set of spare values, safe for concurrent use.
type List[T any] struct{ c chan T }

// New returns a list that keeps at most n values.
func New[T any](n int) List[T] { return List[T]{c: make(chan T, n)} }

// Get takes a spare value; false when there is none (or l is the zero List).
func (l List[T]) Get() (T, bool) {
	select {
	case v := <-l.c:
		return v, true
	default:
		var zero T
		return zero, false
	}
}

// Put keeps v for a later Get, or drops it when the list is full (or l is
// the zero List).
func (l List[T]) Put(v T) {
	select {
	case l.c <- v:
	default:
	}
}
