package main

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
)

// newDLQCommand lists, shows and retries dead letters of CALLPIPE_DLQ.
func newDLQCommand(a *app) *cobra.Command {
	var from uint64
	var limit int
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls [--from SEQ] [--limit N] [--json]",
		Short: "List dead letters: sequence, time, stage, source and reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withJetStream(cmd, "dlq", func(c *cmdEnv) error {
				dls, err := bus.ListDeadLetters(cmd.Context(), c.js, from, limit)
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
			seqs, err := parseSeqs(args)
			if err != nil {
				return err
			}
			return a.withJetStream(cmd, "dlq", func(c *cmdEnv) error {
				d, err := bus.GetDeadLetter(cmd.Context(), c.js, seqs[0])
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
			seqs, err := parseSeqs(args)
			if err != nil {
				return err
			}
			return a.withJetStream(cmd, "dlq", func(c *cmdEnv) error {
				for _, seq := range seqs {
					d, err := bus.RetryDeadLetter(cmd.Context(), c.js, seq)
					if err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "retried %d → %s (stage %s)\n", seq, d.SourceSubject, d.Stage)
				}
				return nil
			})
		},
	}
	return group("dlq", "List, show and retry dead letters (CALLPIPE_DLQ)", ls, show, retry)
}

// parseSeqs are the DLQ sequence numbers of the arguments.
func parseSeqs(args []string) ([]uint64, error) {
	seqs := make([]uint64, len(args))
	for i, s := range args {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: SEQ %q: %v", errUsage, s, err)
		}
		seqs[i] = v
	}
	return seqs, nil
}
