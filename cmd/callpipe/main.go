// Command callpipe is the one binary of the pipeline; each role is a subcommand.
// This package only wires components together: configuration in, components out.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/internal/ops"
)

// exitConfig is the exit status for an invalid configuration.
const exitConfig = 2

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "callpipe:", err)
	if errors.Is(err, errConfig) || errors.Is(err, errUsage) {
		return exitConfig
	}
	return 1
}

var (
	errUsage  = errors.New("usage")
	errConfig = errors.New("invalid configuration")
)

type app struct {
	configFile string
	pprof      string
}

func newRootCommand() *cobra.Command {
	a := &app{}
	root := &cobra.Command{
		Use:   "callpipe",
		Short: "Event-stream ETL for LLM call telemetry: Xinference → NATS JetStream → Langfuse, ClickHouse, S3",
		Long: "Event-stream ETL for LLM call telemetry: Xinference → NATS JetStream → Langfuse, ClickHouse, S3.\n\n" +
			"Every configuration key is also a flag --<section>.<key> (e.g. --nats.url) and an environment variable\n" +
			"CALLPIPE_<SECTION>_<KEY>; `callpipe config example` lists them all with their defaults.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return fmt.Errorf("%w: %v", errUsage, err) })
	root.PersistentFlags().StringVar(&a.configFile, "config", "", "YAML configuration file (default "+config.DefaultFile+" when present)")
	config.RegisterFlags(root.PersistentFlags())
	// One flag for every role (collect, proxy, worker, serve, and any other
	// command): profiling is an operator's switch, not configuration.
	root.PersistentFlags().StringVar(&a.pprof, "pprof", "", "serve net/http/pprof on this host:port (/debug/pprof/), off when empty")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if a.pprof == "" {
			return nil
		}
		return ops.StartPprof(cmd.Context(), a.pprof, slog.Default())
	}
	root.AddCommand(
		newVersionCommand(),
		newConfigCommand(a),
		newMigrateCommand(a),
		newCollectCommand(a),
		newProxyCommand(a),
		newUsersCommand(a), newDLQCommand(a),
	)
	for _, newCommand := range commands {
		root.AddCommand(newCommand(a))
	}
	if len(stages) > 0 {
		root.AddCommand(newWorkerCommand(a))
	}
	return root
}

// commands holds the subcommands that register themselves from their own
// files (replay.go, export.go, serve.go, ...), so adding a role touches one file.
var commands []func(*app) *cobra.Command

func registerCommand(newCommand func(*app) *cobra.Command) { commands = append(commands, newCommand) }

// load reads the effective configuration; aliases map a command's own flags
// (e.g. --listen) to the key they set.
func (a *app) load(cmd *cobra.Command, aliases map[string]string) (*config.Config, *slog.Logger, error) {
	cfg, err := config.Load(config.Sources{File: a.configFile, Flags: cmd.Flags(), Aliases: aliases})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	return cfg, newLogger(cfg.Log), nil
}

func newLogger(c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, opts)
	if c.Format == "text" {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	l := slog.New(h)
	slog.SetDefault(l)
	return l
}
