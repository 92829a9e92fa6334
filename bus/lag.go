package bus

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// LagCollector reports, at scrape time, each consumer's pending messages
// (not yet delivered), ack-pending (delivered, not acknowledged) and
// redelivered counts, and each stream's size. A consumer that does not exist
// (yet) is reported as absent rather than as zero lag.
type LagCollector struct {
	js        jetstream.JetStream
	consumers []Consumer
	streams   []string // reported even without a consumer (the dead-letter stream)
	timeout   time.Duration
	log       *slog.Logger

	pending, ackPending, redelivered, up *prometheus.Desc
	streamMsgs, streamBytes              *prometheus.Desc
}

// NewStageLagCollector watches the consumers of the named stages (every
// stage of Stages when none is named; names without a consumer in all are
// left out), as all names them, and the size of the dead-letter stream.
func NewStageLagCollector(js jetstream.JetStream, all map[string]Consumer, log *slog.Logger, stageNames ...string) *LagCollector {
	if len(stageNames) == 0 {
		for _, s := range Stages {
			stageNames = append(stageNames, s.Name)
		}
	}
	var cs []Consumer
	for _, s := range stageNames {
		if c, ok := all[s]; ok {
			cs = append(cs, c)
		}
	}
	return NewLagCollector(js, cs, []string{DeadLetterStream}, log)
}

// NewLagCollector watches consumers (with the names they run under, which
// may be configured: see ConsumerOf) and the sizes of streams.
func NewLagCollector(js jetstream.JetStream, consumers []Consumer, streams []string, log *slog.Logger) *LagCollector {
	labels := []string{"stage", "stream", "consumer"}
	return &LagCollector{js: js, consumers: consumers, streams: streams, timeout: 2 * time.Second, log: log,
		pending:     prometheus.NewDesc("callpipe_consumer_pending_messages", "Messages in the stream not yet delivered to the consumer.", labels, nil),
		ackPending:  prometheus.NewDesc("callpipe_consumer_ack_pending_messages", "Messages delivered to the consumer and not yet acknowledged.", labels, nil),
		redelivered: prometheus.NewDesc("callpipe_consumer_redelivered_messages", "Messages delivered more than once and not yet acknowledged.", labels, nil),
		up:          prometheus.NewDesc("callpipe_consumer_up", "1 when the consumer exists and answered, 0 otherwise.", labels, nil),
		streamMsgs:  prometheus.NewDesc("callpipe_stream_messages", "Messages stored in the stream.", []string{"stream"}, nil),
		streamBytes: prometheus.NewDesc("callpipe_stream_bytes", "Bytes stored in the stream.", []string{"stream"}, nil),
	}
}

func (c *LagCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pending, c.ackPending, c.redelivered, c.up, c.streamMsgs, c.streamBytes} {
		ch <- d
	}
}

func (c *LagCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	streams := map[string]bool{}
	for _, k := range c.consumers {
		c.consumer(ctx, ch, k)
		streams[k.Stream] = true
	}
	for _, name := range c.streams {
		streams[name] = true
	}
	for name := range streams {
		st, err := c.js.Stream(ctx, name)
		if err != nil {
			continue
		}
		info, err := st.Info(ctx)
		if err != nil {
			c.log.Debug("stream info for metrics", "stream", name, "err", err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.streamMsgs, prometheus.GaugeValue, float64(info.State.Msgs), name)
		ch <- prometheus.MustNewConstMetric(c.streamBytes, prometheus.GaugeValue, float64(info.State.Bytes), name)
	}
}

func (c *LagCollector) consumer(ctx context.Context, ch chan<- prometheus.Metric, k Consumer) {
	up := 0.0
	if cons, err := c.js.Consumer(ctx, k.Stream, k.Name); err == nil {
		if info, err := cons.Info(ctx); err == nil {
			up = 1
			ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(info.NumPending), k.Stage, k.Stream, k.Name)
			ch <- prometheus.MustNewConstMetric(c.ackPending, prometheus.GaugeValue, float64(info.NumAckPending), k.Stage, k.Stream, k.Name)
			ch <- prometheus.MustNewConstMetric(c.redelivered, prometheus.GaugeValue, float64(info.NumRedelivered), k.Stage, k.Stream, k.Name)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, k.Stage, k.Stream, k.Name)
}
