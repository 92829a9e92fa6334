package main

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/transform"
)

func newMigrateCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or update the JetStream streams and consumers (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := a.load(cmd, nil)
			if err != nil {
				return err
			}
			nc, err := connectNATS(cfg, "migrate", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return fmt.Errorf("jetstream: %w", err)
			}
			if err := ingest.EnsureStreams(cmd.Context(), js, streamOptions(cfg)); err != nil {
				return err
			}
			if err := transform.EnsureStreams(cmd.Context(), js, streamOptions(cfg), time.Duration(cfg.Transform.DLQMaxAge)); err != nil {
				return err
			}
			log.Info("streams provisioned", "streams", []string{ingest.CallsStream, transform.NormalizedStream, transform.DeadLetterStream})
			return migrateClickHouse(cmd.Context(), cfg, log) // clickhouse.addr "" skips it
		},
	}
}
