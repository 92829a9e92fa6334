package main

import (
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/config"
)

func newMigrateCommand(a *app) *cobra.Command {
	var retention bool
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create or update the JetStream streams and the ClickHouse schema (idempotent)",
		Long: `Create or update the JetStream streams and consumers and apply the ClickHouse
migrations (clickhouse.addr empty skips ClickHouse). --cluster NAME creates the
tables as Replicated*MergeTree behind Distributed tables, ON CLUSTER NAME.
--retention also drops the partitions past clickhouse.retention_days now
(what the clickhouse stage does every clickhouse.retention_interval on servers
without TTL).`,
		Args: cobra.NoArgs,
		RunE: a.runE(map[string]string{"cluster": "clickhouse.cluster"}, func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error {
			nc, js, err := cfg.ConnectJetStream("migrate", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			if err := bus.EnsureStreams(cmd.Context(), js, cfg.StreamOptions()); err != nil {
				return err
			}
			log.Info("streams provisioned", "streams", bus.Streams)
			if err := bus.LogReplicas(cmd.Context(), js, replicaSettle, log); err != nil {
				return err
			}
			// clickhouse.addr "" skips it
			return cfg.MigrateClickHouse(cmd.Context(), log, retention)
		}),
	}
	cmd.Flags().String("cluster", "", "ClickHouse cluster for Replicated + Distributed tables, DDL ON CLUSTER (clickhouse.cluster)")
	cmd.Flags().BoolVar(&retention, "retention", false, "also drop ClickHouse partitions past clickhouse.retention_days now")
	return cmd
}

// replicaSettle is how long migrate gives the replicas of a stream it just
// created or updated to become current before it reports them as behind.
const replicaSettle = 5 * time.Second
