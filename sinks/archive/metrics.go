package archive

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the archive sink.
type Metrics struct {
	Objects       *prometheus.CounterVec // by flush reason
	Calls         prometheus.Counter
	Bytes         *prometheus.CounterVec // raw (uncompressed NDJSON) and compressed
	Skipped       *prometheus.CounterVec // replay, archived (redelivered, already stored)
	Undecodable   prometheus.Counter
	DeadLetters   prometheus.Counter
	Recovered     prometheus.Counter
	Errors        *prometheus.CounterVec // by operation
	Buffered      prometheus.Gauge
	UploadSeconds prometheus.Histogram
}

// NewMetrics creates the sink's metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Objects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callpipe_archive_objects_total",
			Help: "Archive objects stored, by flush reason (size, age, shutdown)."}, []string{"flush"}),
		Calls: prometheus.NewCounter(prometheus.CounterOpts{Name: "callpipe_archive_calls_total",
			Help: "Calls stored in archive objects (and acked)."}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callpipe_archive_bytes_total",
			Help: "Bytes stored: raw (uncompressed NDJSON) and compressed."}, []string{"kind"}),
		Skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callpipe_archive_skipped_total",
			Help: "Messages acked without archiving: replay (replayed calls), archived (redelivered, already stored)."}, []string{"reason"}),
		Undecodable: prometheus.NewCounter(prometheus.CounterOpts{Name: "callpipe_archive_undecodable_total",
			Help: "Messages the schema decoder rejects, archived raw under their stream timestamp's hour."}),
		DeadLetters: prometheus.NewCounter(prometheus.CounterOpts{Name: "callpipe_archive_dead_letters_total",
			Help: "Messages sent to CALLPIPE_DLQ because they cannot be one NDJSON line."}),
		Recovered: prometheus.NewCounter(prometheus.CounterOpts{Name: "callpipe_archive_recovered_objects_total",
			Help: "Objects rebuilt from the stream after a crash between manifest and upload."}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callpipe_archive_errors_total",
			Help: "Failed operations (manifest, upload, list, recovery, compress, dead_letter); all are retried."}, []string{"op"}),
		Buffered: prometheus.NewGauge(prometheus.GaugeOpts{Name: "callpipe_archive_buffered_calls",
			Help: "Calls in open (not yet closed) archive objects."}),
		UploadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "callpipe_archive_upload_seconds",
			Help: "Time to store one object (manifest and data, retries included).", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}),
	}
	if reg != nil {
		reg.MustRegister(m.Objects, m.Calls, m.Bytes, m.Skipped, m.Undecodable, m.DeadLetters, m.Recovered, m.Errors, m.Buffered, m.UploadSeconds)
	}
	return m
}
