package main

import (
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/ingest"
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
			log.Info("streams provisioned", "stream", ingest.CallsStream)
			return nil
		},
	}
}
