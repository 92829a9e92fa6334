package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/tools/amend"
	"github.com/callpipe/callpipe/tools/replay"
)

// The setup that several commands share: configuration plus one connection.

// cmdEnv is what a command's body gets: the configuration, its logger and,
// from withJetStream, a JetStream connection.
type cmdEnv struct {
	cfg *config.Config
	log *slog.Logger
	js  jetstream.JetStream
}

// withJetStream loads the configuration, connects to JetStream as
// callpipe-<name> and runs f; the connection is closed after f.
func (a *app) withJetStream(cmd *cobra.Command, name string, f func(*cmdEnv) error) error {
	cfg, log, err := a.load(cmd, nil)
	if err != nil {
		return err
	}
	nc, js, err := cfg.ConnectJetStream(name, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	return f(&cmdEnv{cfg: cfg, log: log, js: js})
}

// rangeFlags are --from and --to of a command over a time range.
type rangeFlags struct {
	fromArg, toArg string
	from, to       time.Time
}

func (r *rangeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&r.fromArg, "from", "", "start of the range (inclusive), RFC 3339, YYYY-MM-DDTHH or YYYY-MM-DD, UTC")
	cmd.Flags().StringVar(&r.toArg, "to", "", "end of the range (exclusive), same forms")
}

// parse sets from and to; an error is a usage error.
func (r *rangeFlags) parse() (err error) {
	if r.from, r.to, err = replay.ParseRange(r.fromArg, r.toArg); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return nil
}

// amendFlags are the flags of the commands that correct stored calls
// (package amend): the range and --dry-run.
type amendFlags struct {
	rangeFlags
	dryRun bool
}

func (r *amendFlags) register(cmd *cobra.Command) {
	r.rangeFlags.register(cmd)
	cmd.Flags().BoolVar(&r.dryRun, "dry-run", false, "count only, publish nothing")
}

// run parses the range, connects to JetStream as callpipe-<name>, opens
// ClickHouse (why: what an empty clickhouse.addr is told) and runs f with
// the correction job of kind over the range (a dry run with --dry-run).
func (r *amendFlags) run(a *app, cmd *cobra.Command, kind, why string, f func(c *cmdEnv, job amend.Job) error) error {
	if err := r.parse(); err != nil {
		return err
	}
	return a.withJetStream(cmd, "amend-"+kind, func(c *cmdEnv) error {
		conn, db, err := c.cfg.OpenClickHouse(cmd.Context(), why)
		if err != nil {
			return err
		}
		defer conn.Close()
		js := c.js
		if r.dryRun {
			js = nil
		}
		return f(c, amend.NewJob(kind, conn, db.Database, r.from, r.to, js, cmd.OutOrStdout()))
	})
}

// openInput opens the file a command reads its input from, or its standard
// input for "-".
func openInput(cmd *cobra.Command, path string) (io.ReadCloser, error) {
	if path == "-" {
		return io.NopCloser(cmd.InOrStdin()), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// drained drains nc after a role stopped with err (a graceful stop flushes
// what nc still holds) and returns err.
func drained(nc *nats.Conn, log *slog.Logger, err error) error {
	if dErr := nc.Drain(); dErr != nil {
		log.Error("nats drain", "err", dErr)
	}
	return err
}
