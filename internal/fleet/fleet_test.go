package fleet

import (
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestVMHWM(t *testing.T) {
	status := "Name:\tcallpipe\nVmPeak:\t 1300000 kB\nVmHWM:\t   91234 kB\nVmRSS:\t   80000 kB\n"
	if v, ok := vmHWM(status); !ok || v != 91234 {
		t.Errorf("vmHWM = %d, %v; want 91234", v, ok)
	}
	for _, bad := range []string{"Name:\tzombie\nState:\tZ (zombie)\n", "VmHWM:\t12 MB\n", "VmHWM:\tx kB\n"} {
		if v, ok := vmHWM(bad); ok {
			t.Errorf("%q: got %d, want none", bad, v)
		}
	}
}

// A child's peak RSS is its own, not its parent's: ru_maxrss of a child Go
// started carries the parent's resident set over exec.
func TestPeakRSSIsTheChildsOwn(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	ballast := make([]byte, 128<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	f := &Fleet{Dir: t.TempDir(), Binary: "/bin/sleep", Out: io.Discard}
	if err := f.Start("sleeper", "30"); err != nil {
		t.Fatal(err)
	}
	used, _ := f.Stop() // sleep dies of the SIGTERM: an error, with its usage
	runtime.KeepAlive(ballast)
	u, ok := used["sleeper"]
	if !ok {
		t.Fatal("no usage for the child")
	}
	if u.PeakRSSMB <= 0 || u.PeakRSSMB > 50 {
		t.Errorf("peak RSS of sleep %.1f MB, want its own few MB (the parent holds 128 MB)", u.PeakRSSMB)
	}
}

// A child that exited (say, its port was taken) can be started again under
// its name; the fleet then holds only the new one.
func TestStartReplacesAnExitedChild(t *testing.T) {
	f := &Fleet{Dir: t.TempDir(), Binary: "/bin/sh", Out: io.Discard}
	if err := f.Start("role", "-c", "exit 3"); err != nil {
		t.Fatal(err)
	}
	<-f.children[0].exited
	if err := f.Start("role", "-c", "exec sleep 30"); err != nil {
		t.Fatal(err)
	}
	if len(f.children) != 1 {
		t.Fatalf("%d children named role, want 1", len(f.children))
	}
	if _, err := f.Stop(); err == nil || !strings.Contains(err.Error(), "signal: terminated") {
		t.Errorf("stopping the second child: %v, want it terminated by the SIGTERM (the first one exited with 3)", err)
	}
}

// FreeListen never hands out an address twice, even when the kernel offers
// a just-closed port again.
func TestFreeListenNeverRepeats(t *testing.T) {
	seen := map[string]bool{}
	for range 2000 {
		addr, err := FreeListen()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("FreeListen returned %s twice", addr)
		}
		seen[addr] = true
	}
}

// Exited names a child that has stopped, and nothing while all run.
func TestExitedNamesAStoppedChild(t *testing.T) {
	f := &Fleet{Dir: t.TempDir(), Binary: "/bin/sleep", Out: io.Discard}
	if err := f.Start("sleeper", "30"); err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	if err := f.Exited(); err != nil {
		t.Fatalf("every child runs, Exited: %v", err)
	}
	if err := f.Start("quitter", "0"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.Exited() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := f.Exited(); err == nil || !strings.Contains(err.Error(), "quitter exited") {
		t.Fatalf("Exited after a child stopped: %v", err)
	}
}
