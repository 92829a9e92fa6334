package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/tools/replay"
	"github.com/callpipe/callpipe/transform"
)

// newUsersReresolveCommand looks up again the API keys of calls stored with
// user unresolved (Redis was down and the key not cached) and republishes
// the resolved calls: the ClickHouse stage stores them as newer copies,
// marking their hours dirty so the rollups follow, and Langfuse gets the
// trace's user.
func newUsersReresolveCommand(a *app) *cobra.Command {
	var from, to string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "reresolve --from T --to T [--dry-run]",
		Short: "Resolve the users of calls stored as unresolved (during a Redis outage) and re-store them",
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
			conn, oc, err := openClickHouse(ctx, cfg, "users reresolve reads the unresolved calls from ClickHouse")
			if err != nil {
				return err
			}
			defer conn.Close()
			calls, err := callsdb.UnresolvedCalls(ctx, conn, oc.Database, f, t)
			if err != nil {
				return err
			}
			rdb, err := newRedis(cfg, 0)
			if err != nil {
				return err
			}
			defer rdb.Close()
			users := transform.NewUserResolver(transform.UserOptions{Redis: rdb, KeyPrefix: cfg.Transform.UserKeyPrefix, Log: log})
			var resolved []*callsdb.StoredCall
			for i := range calls {
				c := &calls[i]
				user, src := users.Resolve(ctx, "", c.APIKeyHash)
				if src == schema.UserUnresolved {
					continue // Redis still cannot answer for this key
				}
				c.UserID, c.UserSource = user, src
				resolved = append(resolved, c)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%d unresolved calls in [%s, %s); %d resolved, %d still unresolved\n",
				len(calls), f.Format(time.RFC3339), t.Format(time.RFC3339), len(resolved), len(calls)-len(resolved))
			if dryRun || len(resolved) == 0 {
				return nil
			}
			nc, js, err := connectJS(cfg, "users-reresolve", log)
			if err != nil {
				return err
			}
			defer nc.Close()
			job := "reresolve-" + time.Now().UTC().Format("20060102T150405")
			if err := republish(ctx, js, job, resolved); err != nil {
				return fmt.Errorf("users reresolve: %w", err)
			}
			fmt.Fprintf(out, "published %d calls as replay %s; the clickhouse stage stores them and the rollups follow\n", len(resolved), job)
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "start of the range (RFC 3339, or a UTC hour or day)")
	cmd.Flags().StringVar(&to, "to", "", "end of the range, exclusive")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count only, publish nothing")
	return cmd
}

// republish publishes corrected calls as replay job on CALLPIPE_NORMALIZED,
// for the clickhouse and langfuse stages (clickhouse only for a call whose
// stored text was cut, so that Langfuse keeps the whole text).
func republish(ctx context.Context, js jetstream.JetStream, job string, calls []*callsdb.StoredCall) error {
	for _, c := range calls {
		m := &nats.Msg{Subject: bus.NormalizedSubjectPrefix + "." + c.Kind, Data: schema.AppendCall(nil, &c.Call), Header: nats.Header{}}
		m.Header.Set(bus.HeaderReplay, job)
		m.Header.Set(bus.HeaderMsgID, bus.ReplayMsgID(job, c.ID))
		sinks := "clickhouse,langfuse"
		if c.Truncated {
			sinks = "clickhouse"
		}
		m.Header.Set(bus.HeaderSinks, sinks)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			return fmt.Errorf("publish %s: %w", c.ID, err)
		}
	}
	return nil
}
