package main

import (
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/internal/textout"
	"github.com/callpipe/callpipe/tools/amend"
	"github.com/callpipe/callpipe/transform"
)

// newPricesCommand prints the default price table and stores, shows and
// removes the table the normalize stages price calls with (NATS KV bucket
// callpipe_prices, ahead of transform.prices).
func newPricesCommand(a *app) *cobra.Command {
	// withPrices runs f on the prices bucket.
	withPrices := func(cmd *cobra.Command, f func(kv jetstream.KeyValue) error) error {
		return a.withJetStream(cmd, "prices", func(c *cmdEnv) error {
			kv, err := transform.OpenPrices(cmd.Context(), c.js, c.cfg.NATS.Stream.Replicas)
			if err != nil {
				return err
			}
			return f(kv)
		})
	}
	printCmd := &cobra.Command{
		Use:   "print",
		Short: "Print the built-in price table (model families without prices: fill them in, then `prices set`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return textout.JSONIndent(cmd.OutOrStdout(), transform.DefaultPriceFile())
		},
	}
	get := &cobra.Command{
		Use:   "get",
		Short: "Print the stored price table",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withPrices(cmd, func(kv jetstream.KeyValue) error {
				f, ok, err := transform.GetPrices(cmd.Context(), kv)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("no price table stored in %s; the configured transform.prices apply", transform.PricesBucket)
				}
				return textout.JSONIndent(cmd.OutOrStdout(), f)
			})
		},
	}
	set := &cobra.Command{
		Use:   "set FILE",
		Short: "Store the price table in FILE (- for stdin); normalize stages use it from the next call on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := openInput(cmd, args[0])
			if err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			defer in.Close()
			f, err := transform.ReadPriceFile(in)
			if err != nil {
				return fmt.Errorf("%w: %s: %w", errUsage, args[0], err)
			}
			return withPrices(cmd, func(kv jetstream.KeyValue) error {
				if err := transform.PutPrices(cmd.Context(), kv, f); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "stored %d model prices in %s; normalize stages use them from the next call on\n", len(f.Models), transform.PricesBucket)
				return nil
			})
		},
	}
	del := &cobra.Command{
		Use:   "delete",
		Short: "Remove the stored price table (the configured transform.prices apply again)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withPrices(cmd, func(kv jetstream.KeyValue) error {
				if err := kv.Delete(cmd.Context(), transform.PricesKey); err != nil {
					return fmt.Errorf("prices delete: %w", err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), "stored prices removed; the configured transform.prices apply")
				return nil
			})
		},
	}
	return group("prices", "Model prices in the shape of Langfuse's model definitions, stored in NATS KV and used from the next call on",
		printCmd, get, set, del, newPricesRepriceCommand(a))
}

// newPricesRepriceCommand prices the stored calls of a range again with the
// prices in effect now (the stored table, then transform.prices) and
// republishes the calls whose cost changed, so the rollups and Langfuse
// follow; `rollup rebuild` is not needed afterwards.
func newPricesRepriceCommand(a *app) *cobra.Command {
	var r amendFlags
	cmd := &cobra.Command{
		Use:   "reprice --from T --to T [--dry-run]",
		Short: "Price the stored calls of a range again with the prices in effect and re-store those whose cost changed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return r.run(a, cmd, "reprice", "prices reprice reads the calls from ClickHouse", func(c *cmdEnv, job amend.Job) error {
				table, err := c.cfg.PricesInEffect(cmd.Context(), c.js)
				if err != nil {
					return err
				}
				return job.Reprice(cmd.Context(), table)
			})
		},
	}
	r.register(cmd)
	return cmd
}
