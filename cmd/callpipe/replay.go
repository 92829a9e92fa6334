package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/tools/replay"
)

func newReplayCommand(a *app) *cobra.Command {
	var r rangeFlags
	var model, user, sinks, job string
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
		RunE: a.runE(nil, func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error {
			if err := r.parse(); err != nil {
				return err
			}
			if rateLimit < 0 {
				return fmt.Errorf("%w: --rate %v: must be 0 (unlimited) or positive", errUsage, rateLimit)
			}
			sinkList, err := replay.ParseSinks(sinks)
			if err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			s3, err := cfg.S3Client(0)
			if err != nil {
				return err
			}
			o := replay.Options{
				Job: job, From: r.from, To: r.to, Model: model, User: user, Sinks: sinkList, Rate: rateLimit, DryRun: dryRun,
				Progress: cmd.ErrOrStderr(),
			}
			cp, closeJob, err := cfg.ReplayJob(cmd.Context(), &o, log)
			if err != nil {
				return err
			}
			defer closeJob()
			nc, err := cfg.ConnectNATS("replay", log)
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
		}),
	}
	r.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&model, "model", "", "only calls of this model")
	fl.StringVar(&user, "user", "", "only calls of this user (explicit user, else the API key's owner in Redis)")
	fl.StringVar(&sinks, "sinks", "", "only these sinks process the replayed calls: "+strings.Join(replay.SinkNames, ",")+" (default all)")
	fl.Float64Var(&rateLimit, "rate", 0, "calls per second (0: unlimited)")
	fl.BoolVar(&dryRun, "dry-run", false, "count the matching calls, publish nothing")
	fl.StringVar(&job, "job", "", "job id (letters, digits, - and _); default derived from the arguments, so the same command resumes")
	return cmd
}
