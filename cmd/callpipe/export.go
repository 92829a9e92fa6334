package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/serve/export"
)

func newExportCommand(a *app) *cobra.Command {
	var from, to, model, user, dest, jobID string
	var rate float64
	cmd := &cobra.Command{
		Use:   "export --from T --to T --dest s3://bucket/prefix [--format ndjson|csv|parquet] [--model M] [--user U] [--source calls|archive]",
		Short: "Write the calls of a time range to S3 as large NDJSON, CSV or Parquet objects, a _manifest.json and _SUCCESS",
		Long: `Export writes the normalized calls (ClickHouse, --source calls) or the raw archived events
(--source archive) whose start time is in [--from, --to) to s3://bucket/prefix/part-NNNNN.<ext>, then
_manifest.json (rows, bytes and sha256 per part, the query, the arguments) and _SUCCESS, last.

The job id is derived from the arguments (or --job-id). A Redis lease lets one process run a job; a
second one exits naming the holder. Every finished part is checkpointed in Redis: rerunning a job
that died resumes after its last finished part, and rerunning a finished job does nothing.
Times are RFC 3339 or UTC 2006-01-02[T15[:04[:05]]]. Progress goes to stderr.`,
		Args: cobra.NoArgs,
		RunE: a.runE(map[string]string{"format": "export.format", "source": "export.source", "compression": "export.compression"}, func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error {
			log = log.With("component", "export")
			spec := export.Spec{Model: model, User: user, Format: cfg.Export.Format, Dest: dest,
				Source: cfg.Export.Source, Compression: cfg.Export.Compression, JobID: jobID}
			var err error
			if spec.From, err = export.ParseTime("from", from); err == nil {
				spec.To, err = export.ParseTime("to", to)
			}
			if err == nil {
				err = spec.Normalize(cfg.Export.Compression)
			}
			if err != nil {
				return fmt.Errorf("%w: --%w", errUsage, err)
			}
			ctx := cmd.Context()
			runner, closeRunner, err := cfg.ExportRunner(ctx, log, spec.Source == export.SourceCalls)
			if err != nil {
				return err
			}
			defer closeRunner()

			res, err := runner.RunPrinting(ctx, spec, rate, cmd.ErrOrStderr())
			if err != nil {
				var held *export.LeaseHeldError
				var fe *export.FieldError
				switch {
				case errors.As(err, &held):
					return err
				case errors.As(err, &fe):
					return fmt.Errorf("%w: --%w", errUsage, err)
				case ctx.Err() != nil:
					return fmt.Errorf("export %s stopped; rerun the same command to resume from the last finished part: %w", spec.JobID, err)
				}
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Summary(spec.Dest))
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "start of the range (inclusive)")
	f.StringVar(&to, "to", "", "end of the range (exclusive)")
	f.StringVar(&model, "model", "", "only calls of this model")
	f.StringVar(&user, "user", "", "only calls of this user (source archive: the event's user field)")
	f.StringVar(&dest, "dest", "", "s3://bucket/prefix the objects are written under")
	f.String("format", "", "ndjson, csv or parquet (export.format)")
	f.String("source", "", "calls (normalized, ClickHouse) or archive (raw events, S3) (export.source)")
	f.String("compression", "", "zstd, gzip or none (export.compression)")
	f.StringVar(&jobID, "job-id", "", "job id (default: derived from the arguments)")
	f.Float64Var(&rate, "rate", 0, "at most this many rows per second (0: unlimited)")
	return cmd
}
