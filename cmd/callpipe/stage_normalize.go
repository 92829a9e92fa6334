package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/transform"
)

func init() { stages[bus.StageNormalize] = runNormalizeStage }

// runNormalizeStage consumes CALLPIPE_CALLS and publishes normalized calls
// (transform.Worker) until ctx ends, then drains.
func runNormalizeStage(ctx context.Context, env *workerEnv, log *slog.Logger) error {
	cfg := env.cfg
	t := cfg.Transform
	if err := env.provisionStreams(ctx); err != nil {
		return err
	}
	tok, err := transform.NewTokenizer(t.Tokenizer, t.TokenizerModels)
	if err != nil {
		return fmt.Errorf("%w: transform.tokenizer: %w", errConfig, err)
	}
	prices, err := transform.ParsePrices(t.Prices)
	if err != nil {
		return fmt.Errorf("%w: transform.prices: %w", errConfig, err)
	}
	// normalize counts tokens before its own pass: its policy needs no counter
	privacy, err := capturePolicy(cfg, nil)
	if err != nil {
		return err
	}
	metrics := transform.NewMetrics(env.reg)
	uo := transform.UserOptions{
		KeyPrefix: t.UserKeyPrefix, TTL: time.Duration(t.UserCacheTTL), NegativeTTL: time.Duration(t.UserNegativeTTL),
		Timeout: time.Duration(t.UserLookupTimeout), RetryAfter: time.Duration(t.UserRetryAfter),
		Failures: metrics.UserLookupFailures, Log: log,
	}
	if cfg.Redis.Addr != "" {
		rdb, err := newRedis(cfg, time.Duration(t.UserLookupTimeout))
		if err != nil {
			return err
		}
		defer rdb.Close()
		uo.Redis = rdb
	} else {
		log.Warn("redis.addr is empty: API keys resolve to anonymous")
	}
	n := &transform.Normalizer{
		Tokenizer: tok, Users: transform.NewUserResolver(uo), Prices: prices, Privacy: privacy,
		Limits: schema.Limits{MaxEventBytes: int(cfg.Event.MaxBytes)},
	}
	n.LivePrices = transform.NewLivePrices(prices)
	go watchPrices(ctx, env, n.LivePrices, log)
	w, err := transform.NewWorker(ctx, env.nc, n, transform.WorkerOptions{
		Consumer: t.Consumer, FilterSubject: t.Subject, Concurrency: t.Concurrency, Batch: t.Batch,
		MaxInFlight: t.MaxInFlight, AckWait: time.Duration(t.AckWait), MaxDeliver: t.MaxDeliver,
		MaxAckPending: t.MaxAckPending, RetryDelay: time.Duration(t.RetryDelay), Log: log, Metrics: metrics,
	})
	if err != nil {
		return err
	}
	log.Info("normalize stage running", "consumer", t.Consumer, "subject", t.Subject)
	err = w.Run(ctx)
	log.Info("normalize stage stopped")
	return err
}

// provisionStreams makes sure every stream of the bus exists.
func provisionStreams(ctx context.Context, js jetstream.JetStream, cfg *config.Config) error {
	return bus.EnsureStreams(ctx, js, streamOptions(cfg))
}

// newRedis builds a Redis client from the redis section. Lookups time out
// after timeout (0: go-redis defaults).
func newRedis(cfg *config.Config, timeout time.Duration) (*redis.Client, error) {
	if cfg.Redis.Addr == "" {
		return nil, errors.New("redis.addr is empty")
	}
	tlsCfg, err := cfg.Redis.TLS.Build()
	if err != nil {
		return nil, fmt.Errorf("%w: redis.tls: %w", errConfig, err)
	}
	o := &redis.Options{
		Addr: cfg.Redis.Addr, Username: cfg.Redis.Username, Password: cfg.Redis.Password, DB: cfg.Redis.DB,
		TLSConfig: tlsCfg, MaxRetries: -1, DisableIdentity: true,
	}
	if timeout > 0 {
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = timeout, timeout, timeout
	}
	return redis.NewClient(o), nil
}

// watchPrices keeps live at the table `callpipe prices set` stored in NATS
// KV. Without the bucket the configured prices stay in effect: pricing is
// never a reason for the stage to stop.
func watchPrices(ctx context.Context, env *workerEnv, live *transform.LivePrices, log *slog.Logger) {
	js, err := jetstream.New(env.nc)
	if err != nil {
		log.Error("prices: jetstream; configured prices only", "err", err)
		return
	}
	for {
		kv, err := transform.OpenPrices(ctx, js, env.cfg.NATS.Stream.Replicas)
		if err == nil {
			err = transform.WatchPrices(ctx, kv, live, log)
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("prices: stored prices not watched; retrying", "bucket", transform.PricesBucket, "err", err, "retry_in", "10s")
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}
