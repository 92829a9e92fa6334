package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/replay"
	"github.com/callpipe/callpipe/transform"
)

func init() { registerCommand(newReplayCommand) }

func newReplayCommand(a *app) *cobra.Command {
	var from, to, model, user, sinks, job string
	var rateLimit float64
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "replay --from T --to T [--model M] [--user U] [--sinks clickhouse,langfuse] [--rate N] [--dry-run] [--job ID]",
		Short: "Re-publish archived calls of a time range to the pipeline (resumable, idempotent)",
		Long: `replay reads the S3 archive objects of [--from, --to), keeps the calls that match
--model and --user, and publishes them on callpipe.calls.replay.<job> so that
normalize and the chosen sinks (--sinks; all when empty) process them again; the
archive sink skips them. Progress goes to stderr. The checkpoint lives in Redis:
running the same command again (or with the same --job) resumes a stopped job and
does nothing for a finished one. Replaying a range twice leaves ClickHouse and
Langfuse unchanged (every sink deduplicates by call id).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, t, err := replay.ParseRange(from, to)
			if err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			if rateLimit < 0 {
				return fmt.Errorf("%w: --rate %v: must be 0 (unlimited) or positive", errUsage, rateLimit)
			}
			sinkList, err := replay.ParseSinks(sinks)
			if err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			cfg, log, err := a.load(cmd, nil)
			if err != nil {
				return err
			}
			s3, err := newS3(cfg, 0)
			if err != nil {
				return err
			}
			o := replay.Options{
				Job: job, From: f, To: t, Model: model, User: user, Sinks: sinkList, Rate: rateLimit, DryRun: dryRun,
				Bucket: cfg.S3.Bucket, Prefix: cfg.Archive.Prefix, MaxInFlight: cfg.Archive.ReplayMaxInFlight,
				Limits: schema.Limits{MaxEventBytes: int(cfg.Event.MaxBytes)}, Progress: cmd.ErrOrStderr(), Log: log,
			}
			var cp *replay.Checkpoints
			if !dryRun || user != "" {
				rdb, err := newRedis(cfg, 5*time.Second)
				if err != nil {
					return fmt.Errorf("%w: redis.addr: required for the replay checkpoint: %w", errConfig, err)
				}
				defer rdb.Close()
				cp = replay.NewCheckpoints(rdb, cfg.Archive.ReplayCheckpointPrefix, 0)
				if user != "" {
					o.UserOf = transform.NewUserResolver(transform.UserOptions{Redis: rdb, KeyPrefix: cfg.Transform.UserKeyPrefix,
						Timeout: time.Duration(cfg.Transform.UserLookupTimeout), Log: log}).UserOf
				}
			}
			if dryRun {
				cp = nil
			}
			if !dryRun {
				if err := markReplayDirty(cmd.Context(), cfg, f, t, sinkList, log); err != nil {
					return err
				}
			}
			nc, err := connectNATS(cfg, "replay", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			res, err := replay.Run(cmd.Context(), nc, s3, cp, o)
			if err != nil && !errors.Is(err, replay.ErrStopped) {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Summary(dryRun, err != nil))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&from, "from", "", "start of the range (inclusive), RFC 3339, YYYY-MM-DDTHH or YYYY-MM-DD, UTC")
	fl.StringVar(&to, "to", "", "end of the range (exclusive)")
	fl.StringVar(&model, "model", "", "only calls of this model")
	fl.StringVar(&user, "user", "", "only calls of this user (explicit user, else the API key's owner in Redis)")
	fl.StringVar(&sinks, "sinks", "", "only these sinks process the replayed calls: "+strings.Join(replay.SinkNames, ",")+" (default all)")
	fl.Float64Var(&rateLimit, "rate", 0, "calls per second (0: unlimited)")
	fl.BoolVar(&dryRun, "dry-run", false, "count the matching calls, publish nothing")
	fl.StringVar(&job, "job", "", "job id (letters, digits, - and _); default derived from the arguments, so the same command resumes")
	return cmd
}

// markReplayDirty marks every hour of [from, to) dirty in the usage rollups
// before replaying into ClickHouse: reads switch to those hours' per-call
// rows at once (exact while the calls arrive) and the sealer seals them
// again afterwards (the sink marks them again as the calls land).
func markReplayDirty(ctx context.Context, cfg *config.Config, from, to time.Time, sinks []string, log *slog.Logger) error {
	if cfg.ClickHouse.Addr == "" || (len(sinks) > 0 && !slices.Contains(sinks, bus.StageClickHouse)) {
		return nil
	}
	oc, err := clickhouseStoreConfig(cfg)
	if err != nil {
		return err
	}
	conn, err := callsdb.Open(ctx, oc)
	if err != nil {
		return fmt.Errorf("replay: mark the range dirty in the rollups: %w", err)
	}
	defer conn.Close()
	hours := replay.Hours(from, to, time.Now())
	if err := callsdb.MarkDirty(ctx, conn, cfg.ClickHouse.Database, oc.Topology, hours, "replay", time.Now()); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	log.Info("replay: range marked dirty in the usage rollups", "hours", len(hours))
	return nil
}
