package proxy

import (
	"runtime/debug"
	"testing"
)

// The proxy raises its GC target unless GOGC is set, which wins.
func TestProxyGCPercent(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	t.Setenv("GOGC", "")
	RaiseGCTarget()
	if got := debug.SetGCPercent(100); got != GCPercent {
		t.Errorf("GC percent %d without GOGC, want %d", got, GCPercent)
	}
	t.Setenv("GOGC", "150")
	debug.SetGCPercent(150)
	RaiseGCTarget()
	if got := debug.SetGCPercent(100); got != 150 {
		t.Errorf("GC percent %d with GOGC=150, want it kept", got)
	}
}
