package config

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/tools/bench"
	"github.com/callpipe/callpipe/tools/demo"
	"github.com/callpipe/callpipe/tools/replay"
	"github.com/callpipe/callpipe/transform"
)

// The operations tools (bench, demo, replay) built from the configuration,
// as the stages are in stages.go: configuration in, a tool's inputs out.

// BenchEnv is what `callpipe bench` takes from the configuration; childEnv
// points the bench's processes at this configuration's stack when the
// bench's own environment names another (configFile is passed to them).
func (c *Config) BenchEnv(configFile string, childEnv []string, out io.Writer) (bench.Env, error) {
	db, err := c.CallsDB()
	if err != nil {
		return bench.Env{}, err
	}
	consumers := map[string]bench.Consumer{}
	for name, cons := range c.Consumers() {
		consumers[name] = bench.Consumer{Stream: cons.Stream, Name: cons.Name}
	}
	return bench.Env{
		ConfigFile: configFile, ClickHouse: c.ClickHouse.Output(db), ClickHouseBatch: c.ClickHouse.BatchSize, Consumers: consumers,
		EnsureBucket: func(ctx context.Context) error {
			s3, err := c.S3Client(0)
			if err != nil {
				return err
			}
			return rawarchive.EnsureBucket(ctx, s3, c.S3.Bucket, c.S3.Region)
		},
		ChildEnv: childEnv, Out: out,
	}, nil
}

// BenchSingleNodeEnv is the environment of `bench --cluster`'s single-node
// phase: the configuration file with the variables of envFile (as
// `services.sh env` prints them; default <paths.state_dir>/services/env)
// instead of this process's CALLPIPE_ ones. An unreadable env file is an
// invalid configuration naming it.
func (c *Config) BenchSingleNodeEnv(configFile, envFile string, out io.Writer) (bench.Env, error) {
	if envFile == "" {
		envFile = filepath.Join(c.Paths.StateDir, "services", "env")
	}
	vars, err := bench.ReadEnvFile(envFile)
	if err != nil {
		return bench.Env{}, invalid("bench --cluster-single-env (the single-node stack's env, from services.sh up; or none)", err)
	}
	childEnv, getenv := bench.StackEnv(os.Environ(), vars)
	single, err := Load(Sources{File: configFile, Getenv: getenv})
	if err != nil {
		return bench.Env{}, fmt.Errorf("%w: the single-node stack's configuration (%s): %w", ErrInvalid, envFile, err)
	}
	return single.BenchEnv(configFile, childEnv, out)
}

// DemoEnv is what `callpipe demo` takes from the configuration; release
// releases its Redis client.
func (c *Config) DemoEnv(configFile string, archiveStage bool, upstream string, out io.Writer) (env demo.Env, release func() error, err error) {
	s3, err := c.S3Client(0)
	if err != nil {
		return demo.Env{}, nil, err
	}
	rdb, err := c.RedisClient(0)
	if err != nil {
		return demo.Env{}, nil, err
	}
	return demo.Env{
		ConfigFile: configFile,
		Collect:    c.Collect.Listen, Proxy: c.Proxy.Listen, Worker: c.Worker.Listen, Serve: c.Serve.Listen,
		ArchiveStage: archiveStage, LangfuseHost: c.Langfuse.Host,
		S3: s3, Bucket: c.S3.Bucket, Region: c.S3.Region, Endpoint: c.S3.Endpoint, ArchivePrefix: c.Archive.Prefix,
		Redis: rdb, UserKeyPrefix: c.Transform.UserKeyPrefix,
		Out: out, ExamplePrices: demo.ExamplePrices(c.Transform.Prices, upstream),
	}, rdb.Close, nil
}

// ReplayJob completes o (its job, range, filters, sinks, rate and dry run
// set from the command line) from the configuration: the archive's bucket,
// prefix and in-flight limit, the event limits, the checkpoints in Redis
// (none in a dry run) and the user resolver for o.User. Unless it is a dry
// run it marks the range's hours dirty in ClickHouse (when configured), so
// that the rollups follow the replay. release closes the Redis client.
func (c *Config) ReplayJob(ctx context.Context, o *replay.Options, log *slog.Logger) (cp *replay.Checkpoints, release func() error, err error) {
	o.Bucket, o.Prefix, o.MaxInFlight = c.S3.Bucket, c.Archive.Prefix, c.Archive.ReplayMaxInFlight
	o.Limits, o.Log = c.Limits(), log
	release = func() error { return nil }
	if !o.DryRun || o.User != "" {
		rdb, err := c.RedisClient(5 * time.Second)
		if err != nil {
			return nil, nil, invalid("redis.addr", fmt.Errorf("required for the replay checkpoint: %w", err))
		}
		release = rdb.Close
		if !o.DryRun {
			cp = replay.NewCheckpoints(rdb, c.Archive.ReplayCheckpointPrefix, 0)
		}
		if o.User != "" {
			o.UserOf = transform.NewUserResolver(c.UserOptions(rdb, log)).UserOf
		}
	}
	if !o.DryRun && c.ClickHouse.Addr != "" {
		db, err := c.CallsDB()
		if err == nil {
			err = replay.MarkDirty(ctx, db, o.From, o.To, o.Sinks, log)
		}
		if err != nil {
			_ = release()
			return nil, nil, err
		}
	}
	return cp, release, nil
}

// PricesInEffect is the price table the normalize stages price with now:
// the table stored in the prices bucket, else transform.prices.
func (c *Config) PricesInEffect(ctx context.Context, js jetstream.JetStream) (transform.PriceTable, error) {
	configured, err := c.Prices()
	if err != nil {
		return transform.PriceTable{}, err
	}
	kv, err := transform.OpenPrices(ctx, js, c.NATS.Stream.Replicas)
	if err != nil {
		return transform.PriceTable{}, err
	}
	return transform.PricesInEffect(ctx, kv, configured)
}
