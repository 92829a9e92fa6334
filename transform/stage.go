package transform

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Stage is the normalize stage of a worker process: a Worker over a
// Normalizer whose users come from Redis and whose prices follow the table
// stored in NATS KV.
type Stage struct {
	Normalizer *Normalizer // Tokenizer, Prices (the configured ones), Privacy and Limits set
	Users      UserOptions // Failures and Log are filled in
	Worker     WorkerOptions
	// PricesReplicas are the replicas of the prices bucket when the stage
	// creates it.
	PricesReplicas int
	Registerer     prometheus.Registerer
	Log            *slog.Logger
	// Running, when set, is called once the stage's durable consumer
	// exists and it starts to pull: the process is ready from then on.
	Running func(healthy func() error)
}

// Run consumes CALLPIPE_CALLS and publishes normalized calls until ctx
// ends, then drains.
func (s *Stage) Run(ctx context.Context, nc *nats.Conn) error {
	metrics := NewMetrics(s.Registerer)
	s.Users.Failures, s.Users.Log = metrics.UserLookupFailures, s.Log
	if s.Users.Redis == nil {
		s.Log.Warn("redis.addr is empty: API keys resolve to anonymous")
	}
	n := s.Normalizer
	n.Users = NewUserResolver(s.Users)
	n.LivePrices = NewLivePrices(n.Prices)
	go FollowPrices(ctx, nc, s.PricesReplicas, n.LivePrices, s.Log)
	s.Worker.Log, s.Worker.Metrics = s.Log, metrics
	w, err := NewWorker(ctx, nc, n, s.Worker)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while the consumer was being made: nothing taken
		}
		return err
	}
	if s.Running != nil {
		s.Running(func() error { return nil })
	}
	s.Log.Info("normalize stage running", "consumer", s.Worker.Consumer, "subject", s.Worker.FilterSubject)
	err = w.Run(ctx)
	s.Log.Info("normalize stage stopped")
	return err
}

// pricesRetry is how long FollowPrices waits before it opens the bucket again.
const pricesRetry = 10 * time.Second

// FollowPrices keeps live at the table `callpipe prices set` stored in NATS
// KV until ctx ends. Without the bucket the configured prices stay in
// effect: pricing is never a reason for the stage to stop.
func FollowPrices(ctx context.Context, nc *nats.Conn, replicas int, live *LivePrices, log *slog.Logger) {
	js, err := jetstream.New(nc)
	if err != nil {
		log.Error("prices: jetstream; configured prices only", "err", err)
		return
	}
	for {
		kv, err := OpenPrices(ctx, js, replicas)
		if err == nil {
			err = WatchPrices(ctx, kv, live, log)
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("prices: stored prices not watched; retrying", "bucket", PricesBucket, "err", err, "retry_in", pricesRetry.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(pricesRetry):
		}
	}
}
