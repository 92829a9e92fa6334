// Package fleet runs callpipe roles as child processes of the running binary
// — what an operator runs, one process per role — for `callpipe demo` and
// `callpipe bench`, and reads what they answer.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Fleet is a set of callpipe child processes. Children get their own process
// group, so a terminal's Ctrl-C reaches only the parent, which then stops
// them in pipeline order.
type Fleet struct {
	Dir        string   // logs: <Dir>/<name>.log
	ConfigFile string   // passed to every child as --config when set
	Env        []string // extra environment for every child
	Out        io.Writer
	// Binary is the callpipe binary the children run; empty: this one.
	Binary   string
	children []*child
}

type child struct {
	name   string
	cmd    *exec.Cmd
	log    string
	done   chan error
	exited chan struct{} // closed once the child has exited
	hwmKiB atomic.Int64  // the largest VmHWM read from /proc/<pid>/status
}

// Usage is what a child used: CPU from its rusage when it exited, peak RSS
// from its VmHWM.
type Usage struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	PeakRSSMB  float64 `json:"peak_rss_mb"`
}

// hwmPoll is how often a child's VmHWM is read while it runs.
const hwmPoll = 200 * time.Millisecond

// sampleHWM reads the child's peak resident set (VmHWM) while it runs. Not
// the rusage ru_maxrss of the exited child: Linux carries the high-water
// mark of the memory a process had before exec over, and Go starts a child
// on its parent's memory (vfork), so ru_maxrss of every child is at least
// its parent's resident set when it was started (the bench's own ~100 MB).
func (c *child) sampleHWM() {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(c.cmd.Process.Pid) + "/status")
	if err != nil {
		return
	}
	if kib, ok := vmHWM(string(b)); ok && kib > c.hwmKiB.Load() {
		c.hwmKiB.Store(kib)
	}
}

// vmHWM is the VmHWM line of /proc/<pid>/status, in KiB (absent once the
// process has exited).
func vmHWM(status string) (int64, bool) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, false
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		return v, err == nil
	}
	return 0, false
}

// Start starts the role name as `callpipe args...`, its output in <Dir>/<name>.log.
func (f *Fleet) Start(name string, args ...string) error {
	exe := f.Binary
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("own executable: %w", err)
		}
	}
	if f.ConfigFile != "" {
		args = append(args, "--config", f.ConfigFile)
	}
	logPath := filepath.Join(f.Dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("%s log: %w", name, err)
	}
	c := exec.Command(exe, args...)
	c.Stdout, c.Stderr = logFile, logFile
	c.Env = append(os.Environ(), f.Env...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	// a child of this name that has exited (it failed to start) is replaced
	f.children = slices.DeleteFunc(f.children, func(o *child) bool {
		if o.name != name {
			return false
		}
		select {
		case <-o.exited:
			return true
		default:
			return false
		}
	})
	ch := &child{name: name, cmd: c, log: logPath, done: make(chan error, 1), exited: make(chan struct{})}
	go func() {
		err := c.Wait()
		close(ch.exited)
		ch.done <- err
		logFile.Close()
	}()
	go func() {
		t := time.NewTicker(hwmPoll)
		defer t.Stop()
		for {
			ch.sampleHWM()
			select {
			case <-ch.exited:
				return
			case <-t.C:
			}
		}
	}()
	f.children = append(f.children, ch)
	return nil
}

// Exited reports the first running child that has exited, with the tail of
// its log; nil while every one runs. A caller waiting on the children's
// work checks it so that a crashed role fails the wait instead of stalling
// it.
func (f *Fleet) Exited() error {
	for _, c := range f.children {
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited\n%s", c.name, Tail(c.log))
		default:
		}
	}
	return nil
}

// RunOnce runs a child to completion (migrate).
func (f *Fleet) RunOnce(ctx context.Context, name string, args ...string) error {
	if err := f.Start(name, args...); err != nil {
		return err
	}
	ch := f.children[len(f.children)-1]
	f.children = f.children[:len(f.children)-1]
	select {
	case err := <-ch.done:
		if err != nil {
			return fmt.Errorf("%s failed: %w\n%s", name, err, Tail(ch.log))
		}
		fmt.Fprintf(f.Out, "%-10s done\n", name)
		return nil
	case <-ctx.Done():
		_ = ch.cmd.Process.Signal(syscall.SIGTERM)
		<-ch.done
		return ctx.Err()
	}
}

// readyPatience is how long WaitReady waits for a child's /readyz: a stage
// waits for JetStream to provision its streams (bus.ProvisionWhenReady),
// which on a loaded 3-server cluster can take more than one attempt.
const readyPatience = 2 * time.Minute

// WaitReady waits until the child answers 200 on /readyz of listen.
func (f *Fleet) WaitReady(ctx context.Context, name, listen string) error {
	ch := f.child(name)
	if ch == nil {
		return fmt.Errorf("no child %s", name)
	}
	deadline := time.Now().Add(readyPatience)
	for {
		select {
		case err := <-ch.done:
			ch.done <- err
			return fmt.Errorf("%s exited: %v\n%s", name, err, Tail(ch.log))
		default:
		}
		resp, err := http.Get("http://" + listen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready on %s after %s\n%s", name, listen, readyPatience, Tail(ch.log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Pid is the process id of the running child name, 0 when there is none.
func (f *Fleet) Pid(name string) int {
	if c := f.child(name); c != nil && c.cmd.Process != nil {
		return c.cmd.Process.Pid
	}
	return 0
}

// Pids is the set of the running children's process ids.
func (f *Fleet) Pids() map[int]bool {
	out := map[int]bool{}
	for _, c := range f.children {
		if c.cmd.Process != nil {
			out[c.cmd.Process.Pid] = true
		}
	}
	return out
}

func (f *Fleet) child(name string) *child {
	for _, c := range f.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

// Stop sends SIGTERM to the named children one after the other, in the given
// order (then to any others), waits for each, and returns what each used.
func (f *Fleet) Stop(order ...string) (map[string]Usage, error) {
	seen := map[string]bool{}
	var names []string
	for _, n := range order {
		if f.child(n) != nil && !seen[n] {
			names = append(names, n)
			seen[n] = true
		}
	}
	for _, c := range f.children {
		if !seen[c.name] {
			names = append(names, c.name)
			seen[c.name] = true
		}
	}
	used := map[string]Usage{}
	var errs []error
	for _, name := range names {
		ch := f.child(name)
		ch.sampleHWM()
		_ = ch.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-ch.done:
			if err != nil {
				errs = append(errs, fmt.Errorf("%s stopped with %w (log %s)", name, err, ch.log))
			}
		case <-time.After(45 * time.Second):
			_ = ch.cmd.Process.Kill()
			<-ch.done
			errs = append(errs, fmt.Errorf("%s did not stop within 45s after SIGTERM (log %s)", name, ch.log))
		}
		if ru, ok := ch.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			u := Usage{CPUSeconds: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()}
			if hwm := ch.hwmKiB.Load(); hwm > 0 {
				u.PeakRSSMB = float64(hwm) / 1024
			} else {
				u.PeakRSSMB = float64(ru.Maxrss) / 1024 // no /proc: an upper bound (see sampleHWM)
			}
			used[name] = u
		}
	}
	f.children = nil
	if len(errs) == 0 && len(names) > 0 {
		fmt.Fprintln(f.Out, "stopped    every process exited cleanly")
	}
	return used, errors.Join(errs...)
}

// Running reports whether any child is still to be stopped.
func (f *Fleet) Running() bool { return f.children != nil }

// Log is the log file of the named child ("" when there is none).
func (f *Fleet) Log(name string) string {
	if c := f.child(name); c != nil {
		return c.log
	}
	return ""
}

// Tail is the end of a log file, for error messages.
func Tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// handedOut holds the addresses FreeListen has returned in this process.
var handedOut struct {
	sync.Mutex
	addrs map[string]bool
}

// FreeListen returns a loopback host:port that was free a moment ago and
// that it has not returned before in this process. The kernel may offer a
// port again once its probe listener is closed; two children given the same
// port would leave one unable to bind while WaitReady saw the other's
// /readyz and took it for the first's.
func FreeListen() (string, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("free port: %w", err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if !handedOut.addrs[addr] {
			if handedOut.addrs == nil {
				handedOut.addrs = map[string]bool{}
			}
			handedOut.addrs[addr] = true
			return addr, nil
		}
	}
	return "", errors.New("free port: the kernel offered only ports already handed out")
}
