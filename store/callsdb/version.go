package callsdb

import "sync"

// Versions hands out increasing row versions (the ver of a
// ReplacingMergeTree, where the highest wins) from clock ticks: the tick
// given, or one more than the last version when the clock stalled or
// stepped back. Safe for concurrent use; the zero value is ready.
type Versions struct {
	mu   sync.Mutex
	last uint64
}

// Next is the version for a row written at tick (e.g. Unix microseconds).
func (v *Versions) Next(tick uint64) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.last = max(tick, v.last+1)
	return v.last
}
