package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/tools/bench"
)

func init() { registerCommand(newBenchCommand) }

// newBenchCommand is `callpipe bench` (package bench does the work).
func newBenchCommand(a *app) *cobra.Command {
	var o bench.Options
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure end-to-end throughput, latency, CPU and memory of the pipeline, and the raw limits it runs on",
		Long: "bench runs its own nats-server (fresh JetStream), a scratch ClickHouse database and archive prefix, and a local\n" +
			"Langfuse receiver, so it never touches production data; ClickHouse, MinIO and Redis come from the configuration.\n" +
			"Phase 1 sends --events events of --size bytes through the collector as fast as it accepts them and times each\n" +
			"stage; phase 2 sends at half the measured rate for --latency and measures accept → visible in the usage API;\n" +
			"phase 3 measures JetStream publish+consume and ClickHouse insert of the same data with nothing else running.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := a.load(cmd, nil)
			if err != nil {
				return err
			}
			if err := o.Check(); err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			if o.Dir == "" {
				o.Dir = filepath.Join(cfg.Paths.StateDir, "bench")
			}
			oc, err := clickhouseOutputConfig(cfg)
			if err != nil {
				return err
			}
			consumers := map[string]bench.Consumer{}
			for name, c := range pipelineConsumers(cfg) {
				consumers[name] = bench.Consumer{Stream: c.Stream, Name: c.Name}
			}
			return bench.Run(cmd.Context(), o, bench.Env{
				ConfigFile: a.configFile, ClickHouse: oc, ClickHouseBatch: cfg.ClickHouse.BatchSize, Consumers: consumers,
				EnsureBucket: func(ctx context.Context) error {
					s3, err := newS3(cfg, 0)
					if err != nil {
						return err
					}
					return rawarchive.EnsureBucket(ctx, s3, cfg.S3.Bucket, cfg.S3.Region)
				},
				Out: cmd.OutOrStdout(),
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Events, "events", 100000, "events in the throughput phase")
	f.IntVar(&o.Size, "size", 1024, "bytes per event (a chat call with reported usage)")
	f.IntVar(&o.Clients, "clients", 4, "parallel collector clients")
	f.IntVar(&o.Batch, "batch", 500, "events per NDJSON request")
	f.StringSliceVar(&o.Sinks, "sinks", []string{"clickhouse", "langfuse", "archive"}, "sinks to run")
	f.DurationVar(&o.Latency, "latency", 15*time.Second, "length of the latency phase (0 skips it)")
	f.StringVar(&o.JSON, "json", "", "also write the results as JSON to this file")
	f.StringVar(&o.Dir, "dir", "", "folder for logs and the scratch JetStream store (default <paths.state_dir>/bench)")
	f.StringVar(&o.NATSServer, "nats-server", "", "nats-server binary (default: from PATH or $GOPATH/bin)")
	f.BoolVar(&o.SkipRaw, "skip-raw", false, "skip the raw-limit measurements")
	f.BoolVar(&o.Keep, "keep", false, "keep the scratch ClickHouse database")
	f.StringVar(&o.MemoryLimit, "memory-limit", "192MiB", "GOMEMLIMIT of every callpipe process, as a deployment sets it from the container's memory limit (empty: none)")
	cmd.AddCommand(newBenchUsageCommand(a))
	return cmd
}
