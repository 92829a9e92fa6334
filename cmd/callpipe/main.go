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

	"github.com/callpipe/callpipe/config"
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
	errConfig = config.ErrInvalid
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
	root.AddCommand(newVersionCommand(), newConfigCommand(a), newMigrateCommand(a), newCollectCommand(a), newProxyCommand(a),
		newWorkerCommand(a), newServeCommand(a), newUsersCommand(a), newPricesCommand(a), newDLQCommand(a), newReplayCommand(a),
		newExportCommand(a), newRollupCommand(a), newDoctorCommand(a), newBenchCommand(a), newDemoCommand(a))
	return root
}

// load reads the effective configuration; aliases map a command's own flags
// (e.g. --listen) to the key they set.
func (a *app) load(cmd *cobra.Command, aliases map[string]string) (*config.Config, *slog.Logger, error) {
	cfg, err := config.Load(config.Sources{File: a.configFile, Flags: cmd.Flags(), Aliases: aliases})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	log := cfg.Log.Logger(os.Stderr)
	slog.SetDefault(log)
	return cfg, log, nil
}

// runE is a RunE that loads the configuration first (aliases map the
// command's own flags to the keys they set) and runs f with it.
func (a *app) runE(aliases map[string]string, f func(cmd *cobra.Command, cfg *config.Config, log *slog.Logger) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		cfg, log, err := a.load(cmd, aliases)
		if err != nil {
			return err
		}
		return f(cmd, cfg, log)
	}
}

// group is a command that only holds subcommands.
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short}
	cmd.AddCommand(subs...)
	return cmd
}
