package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/callpipe/callpipe/bus"
)

// StageCost is what one role spent per call in the throughput phase.
type StageCost struct {
	// JSOpsPerCall counts JetStream operations: every message the role
	// published to a stream and every delivery to its consumer (each one
	// acknowledged, so a consume+ack is one operation).
	JSOpsPerCall float64 `json:"jetstream_ops_per_call"`
	CPUMicros    float64 `json:"cpu_us_per_call"`
	// Allocs and AllocBytes are heap allocations (go_memstats_mallocs_total,
	// go_memstats_alloc_bytes_total); -1 when the role's /metrics lacked them.
	Allocs     float64 `json:"allocs_per_call"`
	AllocBytes float64 `json:"alloc_bytes_per_call"`
}

// procSample is a role's counters read from its /metrics.
type procSample struct{ cpu, mallocs, allocBytes float64 }

// sampleProcs reads every role's counters, summed over the role's
// processes; a role of which a process does not answer is left out (its
// cost is then reported as unknown).
func (b *bench) sampleProcs(ctx context.Context, roles []string) map[string]procSample {
	out := map[string]procSample{}
	client := &http.Client{Timeout: 5 * time.Second}
roles:
	for _, r := range roles {
		var sum procSample
		for _, p := range b.procs[r] {
			s, err := scrape(ctx, client, b.addrs[p])
			if err != nil {
				continue roles
			}
			sum = sum.add(s)
		}
		if len(b.procs[r]) > 0 {
			out[r] = sum
		}
	}
	return out
}

// add is the sum of two processes' counters: -1 (unknown) when either
// lacks one.
func (s procSample) add(o procSample) procSample {
	sum := func(x, y float64) float64 {
		if x < 0 || y < 0 {
			return -1
		}
		return x + y
	}
	return procSample{cpu: sum(s.cpu, o.cpu), mallocs: sum(s.mallocs, o.mallocs), allocBytes: sum(s.allocBytes, o.allocBytes)}
}

func scrape(ctx context.Context, client *http.Client, addr string) (procSample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return procSample{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return procSample{}, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return procSample{}, fmt.Errorf("metrics of %s: %w", addr, err)
	}
	val := func(name string) float64 {
		f, ok := fams[name]
		if !ok || len(f.GetMetric()) == 0 {
			return -1
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue()
		}
		return -1
	}
	s := procSample{cpu: val("process_cpu_seconds_total"), mallocs: val("go_memstats_mallocs_total"),
		allocBytes: val("go_memstats_alloc_bytes_total")}
	if s.cpu < 0 {
		return s, fmt.Errorf("metrics of %s: no process_cpu_seconds_total", addr)
	}
	return s, nil
}

// jsCounts are the stream and consumer counters the JetStream cost is
// read from.
type jsCounts struct {
	streamMsgs map[string]uint64 // messages ever stored (last sequence)
	delivered  map[string]uint64 // stage → deliveries to its consumer
}

func (b *bench) jsCounts(ctx context.Context, stages []string) (jsCounts, error) {
	c := jsCounts{streamMsgs: map[string]uint64{}, delivered: map[string]uint64{}}
	for _, name := range bus.Streams {
		st, err := b.js.Stream(ctx, name)
		if err != nil {
			return c, fmt.Errorf("stream %s: %w", name, err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			return c, fmt.Errorf("stream %s: %w", name, err)
		}
		c.streamMsgs[name] = info.State.LastSeq
	}
	for _, s := range stages {
		sc := b.env.Consumers[s]
		cons, err := b.js.Consumer(ctx, sc.Stream, sc.Name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue // not created yet: nothing delivered
		}
		if err != nil {
			return c, fmt.Errorf("consumer %s: %w", sc.Name, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return c, fmt.Errorf("consumer %s: %w", sc.Name, err)
		}
		c.delivered[s] = info.Delivered.Consumer
	}
	return c, nil
}

// costs is each role's cost per call between two samples. The collector
// publishes CALLPIPE_CALLS; normalize consumes it and publishes
// CALLPIPE_NORMALIZED (and dead letters); each sink consumes its stream.
func costs(calls int, stages []string, before, after map[string]procSample, js0, js1 jsCounts) map[string]StageCost {
	n := float64(calls)
	out := map[string]StageCost{}
	for _, r := range append([]string{"collect"}, stages...) {
		c := StageCost{CPUMicros: -1, Allocs: -1, AllocBytes: -1}
		if a, ok := before[r]; ok {
			if b, ok := after[r]; ok {
				c = procCost(a, b, n)
			}
		}
		d := func(stream string) float64 { return float64(js1.streamMsgs[stream] - js0.streamMsgs[stream]) }
		switch r {
		case "collect":
			c.JSOpsPerCall = d(bus.CallsStream) / n
		case bus.StageNormalize:
			c.JSOpsPerCall = (float64(js1.delivered[r]-js0.delivered[r]) + d(bus.NormalizedStream) + d(bus.DeadLetterStream)) / n
		default:
			c.JSOpsPerCall = float64(js1.delivered[r]-js0.delivered[r]) / n
		}
		out[r] = c
	}
	return out
}

// procCost is what a process spent per call over n calls between samples a
// and b: -1 for a counter either sample lacks.
func procCost(a, b procSample, n float64) StageCost {
	per := func(x, y float64) float64 {
		if x < 0 || y < 0 {
			return -1
		}
		return (y - x) / n
	}
	cpu := per(a.cpu, b.cpu)
	if cpu >= 0 {
		cpu *= 1e6
	}
	return StageCost{CPUMicros: cpu, Allocs: per(a.mallocs, b.mallocs), AllocBytes: per(a.allocBytes, b.allocBytes)}
}

// totalCost sums the per-call costs of the pipeline's roles.
func totalCost(c map[string]StageCost) StageCost {
	var t StageCost
	for _, s := range c {
		t.JSOpsPerCall += s.JSOpsPerCall
		t.CPUMicros += max(s.CPUMicros, 0)
		t.Allocs += max(s.Allocs, 0)
		t.AllocBytes += max(s.AllocBytes, 0)
	}
	return t
}

// costOrder is the report's order of roles.
func costOrder(c map[string]StageCost) []string {
	order := []string{"collect", bus.StageNormalize, bus.StageClickHouse, bus.StageLangfuse, bus.StageArchive}
	return slices.DeleteFunc(order, func(r string) bool { _, ok := c[r]; return !ok })
}
