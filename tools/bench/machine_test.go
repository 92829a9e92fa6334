package bench

import (
	"math"
	"testing"
)

func TestStatProc(t *testing.T) {
	// a command holding spaces and parentheses, as /proc prints it
	line := "4242 (clickhouse (srv)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 40 0 9876 1000 100"
	p, err := statProc(line)
	if err != nil {
		t.Fatal(err)
	}
	if p.comm != "clickhouse (srv)" || p.started != 9876 || p.seconds != 3 {
		t.Errorf("parsed %+v, want comm %q, started 9876, 3 s (250 + 50 ticks)", p, "clickhouse (srv)")
	}
	k, err := statProc("17 (kworker/0:1-events_power_efficient) I 2 0 0 0 -1 69238880 0 0 0 0 7 3 0 0 20 0 1 0 55 0 0")
	if err != nil {
		t.Fatal(err)
	}
	if k.comm != "kworker" {
		t.Errorf("kernel worker named %q, want kworker", k.comm)
	}
	if _, err := statProc("17 (short) S 1 2"); err == nil {
		t.Error("a truncated stat line parsed")
	}
}

func TestMachineCost(t *testing.T) {
	const self, role, role2 = 10, 20, 21
	before := machineSample{busy: 100, idle: 50, procs: map[int]procCPU{
		self:  {comm: "callpipe", started: 1, seconds: 1},
		role:  {comm: "callpipe", started: 2, seconds: 2},
		30:    {comm: "nats-server", started: 3, seconds: 5},
		40:    {comm: "old", started: 4, seconds: 9}, // exits; its pid is reused
		50:    {comm: "idle-daemon", started: 5, seconds: 7},
		60:    {comm: "gone", started: 6, seconds: 1},
		role2: {comm: "callpipe", started: 7, seconds: 0},
	}}
	after := machineSample{busy: 102, idle: 50.5, procs: map[int]procCPU{
		self:  {comm: "callpipe", started: 1, seconds: 1.25},
		role:  {comm: "callpipe", started: 2, seconds: 2.5},
		role2: {comm: "callpipe", started: 7, seconds: 0.25},
		30:    {comm: "nats-server", started: 3, seconds: 6},
		40:    {comm: "new", started: 400, seconds: 0.01}, // started in between: all of it
		50:    {comm: "idle-daemon", started: 5, seconds: 7},
		70:    {comm: "nats-server", started: 700, seconds: 0.5},
	}}
	m := machineCost(before, after, 10000, self, map[int]bool{role: true, role2: true})
	want := map[string]float64{"bench": 25, "callpipe roles": 75, "nats-server": 150, "new": 1}
	if len(m.Processes) != len(want) {
		t.Errorf("processes %v, want %v", m.Processes, want)
	}
	for name, us := range want {
		if math.Abs(m.Processes[name]-us) > 1e-9 {
			t.Errorf("%s: %v µs per call, want %v", name, m.Processes[name], us)
		}
	}
	if m.BusyMicros != 200 || m.IdleMicros != 50 {
		t.Errorf("busy %v, idle %v µs per call; want 200 and 50", m.BusyMicros, m.IdleMicros)
	}
	rows := machineRows(m)
	names := []string{}
	for _, r := range rows {
		names = append(names, r.name)
	}
	// "new" (1 µs) is under 1 % of the busy time: summed as other
	if got := names; len(got) != 4 || got[0] != "nats-server" || got[1] != "callpipe roles" || got[2] != "bench" || got[3] != "other" || rows[3].micros != 1 {
		t.Errorf("rows %+v, want nats-server, callpipe roles, bench, then other (1)", rows)
	}
}
