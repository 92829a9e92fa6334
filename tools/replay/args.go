package replay

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/callpipe/callpipe/bus"
)

// SinkNames are the stages --sinks may name: the sinks of normalized calls.
var SinkNames = bus.Readers(bus.NormalizedStream)

// ParseTime accepts RFC 3339 (2026-11-26T20:00:00Z), a UTC hour
// (2026-11-26T20) or a UTC day (2026-11-26); flag names the argument in the
// error.
func ParseTime(flag, s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15", time.DateOnly} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("--%s %q: want RFC 3339 (2026-11-26T20:00:00Z), an hour (2026-11-26T20) or a day (2026-11-26), UTC", flag, s)
}

// ParseRange parses --from and --to (ParseTime forms): both required, --to
// after --from. Its errors are usage errors naming the flags.
func ParseRange(from, to string) (f, t time.Time, err error) {
	if from == "" || to == "" {
		return f, t, fmt.Errorf("--from and --to are required")
	}
	if f, err = ParseTime("from", from); err != nil {
		return f, t, err
	}
	if t, err = ParseTime("to", to); err != nil {
		return f, t, err
	}
	if !t.After(f) {
		return f, t, fmt.Errorf("--to %s must be after --from %s", to, from)
	}
	return f, t, nil
}

// ParseSinks parses --sinks: a comma-separated list of SinkNames, empty
// meaning all.
func ParseSinks(s string) ([]string, error) {
	var sinks []string
	for _, name := range strings.Split(s, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if !slices.Contains(SinkNames, name) {
			return nil, fmt.Errorf("--sinks: unknown sink %q (allowed: %s)", name, strings.Join(SinkNames, ", "))
		}
		sinks = append(sinks, name)
	}
	return sinks, nil
}

// Hours are the starts (Unix seconds) of the UTC hours of [from, to) that
// have begun by now: what a replay into ClickHouse marks dirty in the usage
// rollups before it publishes.
func Hours(from, to, now time.Time) []int64 {
	var hours []int64
	for h := from.Truncate(time.Hour); h.Before(to) && h.Before(now); h = h.Add(time.Hour) {
		hours = append(hours, h.Unix())
	}
	return hours
}
