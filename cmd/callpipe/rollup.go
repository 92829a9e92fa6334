package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/replay"
)

func init() { registerCommand(newRollupCommand) }

// newRollupCommand is `callpipe rollup status|rebuild`: the sealed usage
// rollups behind the usage overview (see schema/clickhouse/README.md).
func newRollupCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollup",
		Short: "Inspect or rebuild the sealed usage rollups (the usage overview's pre-aggregates)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newRollupStatusCommand(a), newRollupRebuildCommand(a))
	return cmd
}

// openSealer connects to ClickHouse with the configuration's sealing settings.
func openSealer(a *app, cmd *cobra.Command) (*callsdb.Sealer, func(), error) {
	cfg, log, err := a.load(cmd, nil)
	if err != nil {
		return nil, nil, err
	}
	conn, oc, err := openClickHouse(cmd.Context(), cfg, "required")
	if err != nil {
		return nil, nil, err
	}
	return callsdb.NewSealer(conn, oc, clickhouseRollup(cfg), log), func() { _ = conn.Close() }, nil
}

func newRollupStatusCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Sealed-through time, lag, unsealed and dirty hours",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, closeConn, err := openSealer(a, cmd)
			if err != nil {
				return err
			}
			defer closeConn()
			st, err := callsdb.Status(cmd.Context(), s.Conn, s.Database, s.SealAfter, time.Now())
			if err != nil {
				return err
			}
			return st.WriteText(cmd.OutOrStdout(), asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newRollupRebuildCommand(a *app) *cobra.Command {
	var from, to string
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
			f, t, err := replay.ParseRange(from, to)
			if err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			s, closeConn, err := openSealer(a, cmd)
			if err != nil {
				return err
			}
			defer closeConn()
			t0 := time.Now()
			errOut := cmd.ErrOrStderr()
			sealed, notBefore, err := s.Rebuild(cmd.Context(), f, t, func(done, total int, h time.Time) {
				fmt.Fprintf(errOut, "rollup rebuild: %d/%d hours (%s)\n", done, total, h.Format("2006-01-02T15"))
			})
			if err != nil {
				return fmt.Errorf("rollup rebuild after %d hours: %w", sealed, err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "rollup rebuild: %d hours sealed in %s\n", sealed, time.Since(t0).Round(time.Millisecond))
			if notBefore.Before(t) {
				fmt.Fprintf(out, "rollup rebuild: hours from %s are within seal_after of now: the clickhouse stage seals them\n", notBefore.Format(time.RFC3339))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&from, "from", "", "start of the range (inclusive), RFC 3339, YYYY-MM-DDTHH or YYYY-MM-DD, UTC")
	fl.StringVar(&to, "to", "", "end of the range (exclusive), same forms")
	return cmd
}
