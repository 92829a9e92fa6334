package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// realtimePriority is the SCHED_FIFO priority of --proxy-realtime: above
// every process of the normal class (the pipeline, ClickHouse, MinIO,
// NATS), below the kernel's own real-time threads.
const realtimePriority = 10

// holdRealtime runs every thread of the processes pids at SCHED_FIFO
// realtimePriority until ctx ends, then every thread of them still running
// back at SCHED_NORMAL (SCHED_OTHER). Threads a process starts later are caught by a
// sweep every 100 ms. It fails at once when the first sweep is refused
// (the bench needs CAP_SYS_NICE, e.g. root).
func holdRealtime(ctx context.Context, pids []int) (done func(), err error) {
	if err := setPolicy(pids, unix.SCHED_FIFO, realtimePriority); err != nil {
		return nil, fmt.Errorf("bench proxy: --proxy-realtime: %w (needs CAP_SYS_NICE)", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				_ = setPolicy(pids, unix.SCHED_NORMAL, 0)
				return
			case <-tick.C:
				_ = setPolicy(pids, unix.SCHED_FIFO, realtimePriority)
			}
		}
	}()
	return func() { cancel(); <-stopped }, nil
}

// setPolicy sets the scheduling policy of every thread of pids; a thread
// or process that ended meanwhile is passed over.
func setPolicy(pids []int, policy uint32, priority uint32) error {
	attr := unix.SchedAttr{Policy: policy, Priority: priority} // SchedSetAttr sets Size
	for _, pid := range pids {
		tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		if err != nil {
			continue // exited
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && err != unix.ESRCH {
				return fmt.Errorf("sched_setattr of thread %d of process %d: %w", tid, pid, err)
			}
		}
	}
	return nil
}
