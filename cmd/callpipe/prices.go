package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/replay"
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
	cmd.AddCommand(printCmd, get, set, del, newPricesRepriceCommand(a))
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

// newPricesRepriceCommand prices the stored calls of a range again with the
// prices in effect now (the stored table, then transform.prices) and
// republishes the calls whose cost changed, so the rollups and Langfuse
// follow; `rollup rebuild` is not needed afterwards.
func newPricesRepriceCommand(a *app) *cobra.Command {
	var from, to string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "reprice --from T --to T [--dry-run]",
		Short: "Price the stored calls of a range again with the prices in effect and re-store those whose cost changed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, t, err := replay.ParseRange(from, to)
			if err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			cfg, log, err := a.load(cmd, nil)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			configured, err := transform.ParsePrices(cfg.Transform.Prices)
			if err != nil {
				return fmt.Errorf("%w: transform.prices: %w", errConfig, err)
			}
			live := transform.NewLivePrices(configured)
			kv, done, err := a.pricesKV(cmd)
			if err != nil {
				return err
			}
			defer done()
			if stored, ok, err := transform.GetPrices(ctx, kv); err != nil {
				return err
			} else if ok {
				st, err := stored.Compile()
				if err != nil {
					return fmt.Errorf("stored prices: %w", err)
				}
				live.Set(st)
			}
			conn, oc, err := openClickHouse(ctx, cfg, "prices reprice reads the calls from ClickHouse")
			if err != nil {
				return err
			}
			defer conn.Close()
			nc, js, err := connectJS(cfg, "prices-reprice", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			job := "reprice-" + time.Now().UTC().Format("20060102T150405")
			table := live.Table()
			var seen, changed int
			err = callsdb.RangeCalls(ctx, conn, oc.Database, f, t, func(calls []callsdb.StoredCall) error {
				var out []*callsdb.StoredCall
				for i := range calls {
					c := &calls[i]
					seen++
					cost := table.Cost(c.Model, c.InputTokens, c.OutputTokens)
					if sameCost(cost, c.CostUSD) {
						continue
					}
					c.CostUSD = cost
					out = append(out, c)
				}
				changed += len(out)
				if dryRun {
					return nil
				}
				return republish(ctx, js, job, out)
			})
			if err != nil {
				return fmt.Errorf("prices reprice: %w", err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%d calls in [%s, %s); %d with a changed cost\n", seen, f.Format(time.RFC3339), t.Format(time.RFC3339), changed)
			if !dryRun && changed > 0 {
				fmt.Fprintf(w, "published them as replay %s; the clickhouse stage stores them and the rollups follow\n", job)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "start of the range (RFC 3339, or a UTC hour or day)")
	cmd.Flags().StringVar(&to, "to", "", "end of the range, exclusive")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count only, publish nothing")
	return cmd
}

// sameCost compares costs as stored (Float64 in ClickHouse) and computed.
func sameCost(a, b *float64) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return math.Abs(*a-*b) <= 1e-12*math.Max(1, math.Abs(*b))
}
