package transform

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the transform stage.
type Metrics struct {
	events             *prometheus.CounterVec
	UserLookupFailures prometheus.Counter
}

// NewMetrics creates the transform metrics and registers them with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callpipe_transform_events_total",
			Help: "Raw call events handled by the normalize stage, by result: normalized, dead_letter, retry, skipped (routed to other stages only).",
		}, []string{"result"}),
		UserLookupFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callpipe_transform_user_lookup_failures_total",
			Help: "API-key user lookups that Redis could not answer and the cache did not hold (records marked user_source=unresolved).",
		}),
	}
	for _, r := range []string{"normalized", "dead_letter", "retry", "skipped"} {
		m.events.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.events, m.UserLookupFailures)
	}
	return m
}
