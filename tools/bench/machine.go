package bench

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// MachineCPU is where the machine's CPUs went during the throughput
// phase, per call: every process's CPU grouped by its command name, and
// the time no process used. It is what bounds the end-to-end rate when
// the pipeline, its services and the load share a few cores: the rate
// is at most the CPUs' time divided by the CPU a call costs all of them.
type MachineCPU struct {
	// Processes is CPU µs per call by command name ("callpipe roles" for
	// the pipeline's processes, "bench" for this one: load and receivers).
	Processes map[string]float64 `json:"processes_cpu_us_per_call"`
	// BusyMicros is every CPU's busy time per call (/proc/stat: user,
	// nice, system, irq, softirq, steal), IdleMicros its idle and iowait.
	BusyMicros float64 `json:"busy_cpu_us_per_call"`
	IdleMicros float64 `json:"idle_cpu_us_per_call"`
}

// machineSample is the CPU seconds of every process alive when it was
// taken, by process id, and the machine's busy and idle seconds.
type machineSample struct {
	procs      map[int]procCPU
	busy, idle float64
}

type procCPU struct {
	comm    string
	started uint64 // clock ticks after boot: a reused pid starts later
	seconds float64
}

// sampleMachine reads /proc (Linux). A process that exits between the
// listing and the read is left out; ok is false where /proc/stat cannot
// be read (not Linux).
func sampleMachine() (machineSample, bool) {
	busy, idle, err := machineCPUSeconds()
	if err != nil {
		return machineSample{}, false
	}
	s := machineSample{procs: map[int]procCPU{}, busy: busy, idle: idle}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		p, err := statProc(string(stat))
		if err != nil {
			continue
		}
		s.procs[pid] = p
	}
	return s, true
}

// statProc is the command name, start time and utime + stime of a
// /proc/<pid>/stat line. Kernel workers rename themselves after the work
// they run ("kworker/0:1-events"): they are one name, "kworker".
func statProc(stat string) (procCPU, error) {
	// the command (field 2) is in parentheses and may hold spaces
	open, end := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return procCPU{}, errors.New("/proc stat: no command field")
	}
	// after the command: state is field 3, utime 14, stime 15, starttime 22
	f := strings.Fields(stat[end+1:])
	if len(f) < 20 {
		return procCPU{}, fmt.Errorf("/proc stat: %d fields after the command", len(f))
	}
	var n [3]uint64
	for i, field := range [...]string{f[11], f[12], f[19]} {
		v, err := strconv.ParseUint(field, 10, 64)
		if err != nil {
			return procCPU{}, fmt.Errorf("/proc stat: %w", err)
		}
		n[i] = v
	}
	comm := stat[open+1 : end]
	if strings.HasPrefix(comm, "kworker/") {
		comm = "kworker"
	}
	// ticks of 1/100 s (USER_HZ, what /proc reports on Linux)
	return procCPU{comm: comm, started: n[2], seconds: float64(n[0]+n[1]) / 100}, nil
}

// machineCPUSeconds is the first line of /proc/stat (every CPU summed):
// busy = user + nice + system + irq + softirq + steal, idle = idle +
// iowait, in seconds of USER_HZ = 100 ticks.
func machineCPUSeconds() (busy, idle float64, err error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: first line %q is not the CPUs' sum", line)
	}
	ticks := make([]float64, 8)
	for i := range ticks {
		v, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat field %d: %w", i+1, err)
		}
		ticks[i] = float64(v)
	}
	// user nice system idle iowait irq softirq steal
	busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
	idle = ticks[3] + ticks[4]
	return busy / 100, idle / 100, nil
}

// machineCost is what every process spent between two samples per call.
// A process that started between them counts all its CPU; one that exited
// between them is missing (its last CPU is not in either sample). self is
// this process's id, roles the pipeline's.
func machineCost(before, after machineSample, calls int, self int, roles map[int]bool) *MachineCPU {
	per := func(secs float64) float64 { return secs * 1e6 / float64(calls) }
	m := &MachineCPU{Processes: map[string]float64{},
		BusyMicros: per(after.busy - before.busy), IdleMicros: per(after.idle - before.idle)}
	for pid, p := range after.procs {
		spent := p.seconds
		if b, ok := before.procs[pid]; ok && b.started == p.started {
			spent -= b.seconds
		}
		if spent <= 0 {
			continue
		}
		name := p.comm
		switch {
		case pid == self:
			name = "bench"
		case roles[pid]:
			name = "callpipe roles"
		}
		m.Processes[name] += per(spent)
	}
	return m
}

// machineRows orders a MachineCPU's processes by CPU, largest first,
// those under 1 % of the busy time summed as "other".
func machineRows(m *MachineCPU) []costRow {
	var rows []costRow
	other := 0.0
	for name, us := range m.Processes {
		if us < m.BusyMicros/100 {
			other += us
			continue
		}
		rows = append(rows, costRow{name, us})
	}
	slices.SortFunc(rows, func(a, b costRow) int {
		return cmp.Or(cmp.Compare(b.micros, a.micros), strings.Compare(a.name, b.name))
	})
	if other > 0 {
		rows = append(rows, costRow{"other", other})
	}
	return rows
}

type costRow struct {
	name   string
	micros float64
}
