package bench

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// policies are the scheduling policies of every thread of pid.
func policies(t *testing.T, pid int) []uint32 {
	t.Helper()
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []uint32
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		attr, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			t.Fatalf("sched_getattr %d: %v", tid, err)
		}
		out = append(out, attr.Policy)
	}
	return out
}

func TestHoldRealtimeSetsAndRestoresEveryThread(t *testing.T) {
	// A Go child has several threads from its start; sleep's one is enough
	// for the policy, and this test's own process checks the many-thread case.
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	done, err := holdRealtime(context.Background(), []int{child.Process.Pid, os.Getpid()})
	if err != nil {
		if errors.Is(err, unix.EPERM) && os.Getenv("CI") == "" {
			t.Skip("no CAP_SYS_NICE here:", err)
		}
		t.Fatal(err)
	}
	for _, pid := range []int{child.Process.Pid, os.Getpid()} {
		for _, p := range policies(t, pid) {
			if p != unix.SCHED_FIFO {
				t.Fatalf("process %d: a thread has policy %d while held, want SCHED_FIFO", pid, p)
			}
		}
	}
	done()
	for _, pid := range []int{child.Process.Pid, os.Getpid()} {
		for _, p := range policies(t, pid) {
			if p != unix.SCHED_NORMAL {
				t.Fatalf("process %d: a thread has policy %d after release, want SCHED_NORMAL", pid, p)
			}
		}
	}
}
