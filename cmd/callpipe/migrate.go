package main

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
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
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := a.load(cmd, map[string]string{"cluster": "clickhouse.cluster"})
			if err != nil {
				return err
			}
			nc, js, err := connectJS(cfg, "migrate", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			if err := bus.EnsureStreams(cmd.Context(), js, streamOptions(cfg)); err != nil {
				return err
			}
			log.Info("streams provisioned", "streams", bus.Streams)
			if err := logStreamReplicas(cmd.Context(), js, log); err != nil {
				return err
			}
			// clickhouse.addr "" skips it
			return migrateClickHouse(cmd.Context(), cfg, log, retention)
		},
	}
	cmd.Flags().String("cluster", "", "ClickHouse cluster for Replicated + Distributed tables, DDL ON CLUSTER (clickhouse.cluster)")
	cmd.Flags().BoolVar(&retention, "retention", false, "also drop ClickHouse partitions past clickhouse.retention_days now")
	return cmd
}

// replicaSettle is how long migrate gives the replicas of a stream it just
// created or updated to become current before it reports them as behind.
const replicaSettle = 5 * time.Second

// logStreamReplicas reports each stream's replicas after provisioning: a
// replicated stream with a replica offline or behind still works, so it is a
// warning naming the server, not an error.
func logStreamReplicas(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error {
	for _, name := range bus.Streams {
		var h bus.ReplicaHealth
		var err error
		for deadline := time.Now().Add(replicaSettle); ; {
			if h, err = bus.ReplicaHealthOf(ctx, js, name); err != nil {
				return err
			}
			if h.Healthy() || time.Now().After(deadline) {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
		if h.Healthy() {
			log.Info("stream replicas", "stream", name, "replicas", h.String())
			continue
		}
		log.Warn("stream replicas not all current", "stream", name, "replicas", h.String(), "not_current", strings.Join(h.Degraded(), ","))
	}
	return nil
}
