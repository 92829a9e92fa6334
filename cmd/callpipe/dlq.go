package main

import (
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
)

// newDLQCommand lists, shows and retries dead letters of CALLPIPE_DLQ.
func newDLQCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "List, show and retry dead letters (CALLPIPE_DLQ)",
	}
	withJS := func(cmd *cobra.Command, f func(js jetstream.JetStream) error) error {
		cfg, log, err := a.load(cmd, nil)
		if err != nil {
			return err
		}
		nc, js, err := connectJS(cfg, "dlq", log)
		if err != nil {
			return err
		}
		defer nc.Close()
		return f(js)
	}
	var from uint64
	var limit int
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls [--from SEQ] [--limit N] [--json]",
		Short: "List dead letters: sequence, time, stage, source and reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withJS(cmd, func(js jetstream.JetStream) error {
				dls, err := bus.ListDeadLetters(cmd.Context(), js, from, limit)
				if err != nil {
					return err
				}
				return bus.PrintDeadLetters(cmd.OutOrStdout(), dls, asJSON)
			})
		},
	}
	ls.Flags().Uint64Var(&from, "from", 0, "first DLQ sequence")
	ls.Flags().IntVar(&limit, "limit", 100, "most dead letters listed; 0 lists all")
	ls.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")

	show := &cobra.Command{
		Use:   "show SEQ",
		Short: "Print a dead letter's headers and original bytes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			seq, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("%w: SEQ %q: %v", errUsage, args[0], err)
			}
			return withJS(cmd, func(js jetstream.JetStream) error {
				d, err := bus.GetDeadLetter(cmd.Context(), js, seq)
				if err != nil {
					return err
				}
				return bus.PrintDeadLetter(cmd.OutOrStdout(), d)
			})
		},
	}
	retry := &cobra.Command{
		Use:   "retry SEQ...",
		Short: "Re-publish dead letters to the stage they failed in (only) and delete them from the DLQ",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			seqs := make([]uint64, len(args))
			for i, s := range args {
				v, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					return fmt.Errorf("%w: SEQ %q: %v", errUsage, s, err)
				}
				seqs[i] = v
			}
			return withJS(cmd, func(js jetstream.JetStream) error {
				for _, seq := range seqs {
					d, err := bus.RetryDeadLetter(cmd.Context(), js, seq)
					if err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "retried %d → %s (stage %s)\n", seq, d.SourceSubject, d.Stage)
				}
				return nil
			})
		},
	}
	cmd.AddCommand(ls, show, retry)
	return cmd
}
