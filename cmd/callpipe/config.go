package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/config"
)

func newConfigCommand(a *app) *cobra.Command {
	return group("config", "Show the configuration", &cobra.Command{
		Use:   "print",
		Short: "Print the effective configuration (file, environment and flags applied) with secrets masked",
		Args:  cobra.NoArgs,
		RunE: a.runE(nil, func(cmd *cobra.Command, cfg *config.Config, _ *slog.Logger) error {
			out, err := cfg.Masked().YAML()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		}),
	}, &cobra.Command{
		Use:   "example",
		Short: "Print a commented configuration file with every key and its default",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(config.Example())
			return err
		},
	})
}
