package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/store/callsdb"
)

// newRollupCommand is `callpipe rollup status|rebuild`: the sealed usage
// rollups behind the usage overview (see schema/clickhouse/README.md).
func newRollupCommand(a *app) *cobra.Command {
	return group("rollup", "Inspect or rebuild the sealed usage rollups (the usage overview's pre-aggregates)",
		newRollupStatusCommand(a), newRollupRebuildCommand(a))
}

// withSealer runs f with a sealer over the configured ClickHouse.
func (a *app) withSealer(cmd *cobra.Command, f func(s *callsdb.Sealer) error) error {
	cfg, log, err := a.load(cmd, nil)
	if err != nil {
		return err
	}
	conn, db, err := cfg.OpenClickHouse(cmd.Context(), "required")
	if err != nil {
		return err
	}
	defer conn.Close()
	return f(callsdb.NewSealer(conn, db, cfg.ClickHouse.RollupConfig(), log))
}

func newRollupStatusCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Sealed-through time, lag, unsealed and dirty hours",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withSealer(cmd, func(s *callsdb.Sealer) error {
				st, err := callsdb.Status(cmd.Context(), s.Conn, s.Database, s.SealAfter, time.Now())
				if err != nil {
					return err
				}
				return st.WriteText(cmd.OutOrStdout(), asJSON)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newRollupRebuildCommand(a *app) *cobra.Command {
	var r rangeFlags
	cmd := &cobra.Command{
		Use:   "rebuild --from T --to T",
		Short: "Recompute the rollups of a range from the calls table (exact, idempotent, safe while the pipeline runs)",
		Long: `rebuild seals every hour of [--from, --to) again from the calls table (each call
counted once, its newest copy), then the days those hours complete. Sealing again
replaces a seal and never adds to it, so a rebuild can be repeated or stopped at any
point: reads stay exact throughout. Hours within clickhouse.rollup.seal_after of
now are left to the clickhouse stage. Use it after a bulk load or a repair.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := r.parse(); err != nil {
				return err
			}
			return a.withSealer(cmd, func(s *callsdb.Sealer) error {
				t0, errOut := time.Now(), cmd.ErrOrStderr()
				sealed, notBefore, err := s.Rebuild(cmd.Context(), r.from, r.to, func(done, total int, h time.Time) {
					fmt.Fprintf(errOut, "rollup rebuild: %d/%d hours (%s)\n", done, total, h.Format("2006-01-02T15"))
				})
				if err != nil {
					return fmt.Errorf("rollup rebuild after %d hours: %w", sealed, err)
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "rollup rebuild: %d hours sealed in %s\n", sealed, time.Since(t0).Round(time.Millisecond))
				if notBefore.Before(r.to) {
					fmt.Fprintf(out, "rollup rebuild: hours from %s are within seal_after of now: the clickhouse stage seals them\n", notBefore.Format(time.RFC3339))
				}
				return nil
			})
		},
	}
	r.register(cmd)
	return cmd
}
