package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/transform"
)

func init() { registerCommand(newPricesCommand) }

// newPricesCommand prints the default price table and stores, shows and
// removes the table the normalize stages price calls with (NATS KV bucket
// callpipe_prices, ahead of transform.prices).
func newPricesCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "prices",
		Short: "Model prices in the shape of Langfuse's model definitions, stored in NATS KV and used from the next call on",
	}
	printCmd := &cobra.Command{
		Use:   "print",
		Short: "Print the built-in price table (model families without prices: fill them in, then `prices set`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return writeJSON(cmd.OutOrStdout(), transform.DefaultPriceFile())
		},
	}
	get := &cobra.Command{
		Use:   "get",
		Short: "Print the stored price table",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kv, done, err := a.pricesKV(cmd)
			if err != nil {
				return err
			}
			defer done()
			f, ok, err := transform.GetPrices(cmd.Context(), kv)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("no price table stored in %s; the configured transform.prices apply", transform.PricesBucket)
			}
			return writeJSON(cmd.OutOrStdout(), f)
		},
	}
	set := &cobra.Command{
		Use:   "set FILE",
		Short: "Store the price table in FILE (- for stdin); normalize stages use it from the next call on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return fmt.Errorf("%w: %w", errUsage, err)
				}
				defer f.Close()
				r = f
			}
			var f transform.PriceFile
			dec := json.NewDecoder(r)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&f); err != nil {
				return fmt.Errorf("%w: %s: not a price table (%v); see `callpipe prices print`", errUsage, args[0], err)
			}
			if _, err := f.Compile(); err != nil {
				return fmt.Errorf("%w: %s: %w", errUsage, args[0], err)
			}
			kv, done, err := a.pricesKV(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := transform.PutPrices(cmd.Context(), kv, f); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stored %d model prices in %s; normalize stages use them from the next call on\n", len(f.Models), transform.PricesBucket)
			return nil
		},
	}
	del := &cobra.Command{
		Use:   "delete",
		Short: "Remove the stored price table (the configured transform.prices apply again)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kv, done, err := a.pricesKV(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := kv.Delete(cmd.Context(), transform.PricesKey); err != nil {
				return fmt.Errorf("prices delete: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "stored prices removed; the configured transform.prices apply")
			return nil
		},
	}
	cmd.AddCommand(printCmd, get, set, del)
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// pricesKV connects to NATS and opens the prices bucket; done closes the
// connection.
func (a *app) pricesKV(cmd *cobra.Command) (kv jetstream.KeyValue, done func(), err error) {
	cfg, log, err := a.load(cmd, nil)
	if err != nil {
		return nil, nil, err
	}
	nc, js, err := connectJS(cfg, "prices", log)
	if err != nil {
		return nil, nil, err
	}
	kv, err = transform.OpenPrices(cmd.Context(), js, cfg.NATS.Stream.Replicas)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return kv, nc.Close, nil
}
