package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/config"
	"github.com/callpipe/callpipe/tools/doctor"
)

// errBroken makes `callpipe doctor` exit 1 after it printed what is broken.
var errBroken = errors.New("some dependencies are broken (see the FAIL lines)")

func newDoctorCommand(a *app) *cobra.Command {
	var timeout time.Duration
	var probe string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check every configured dependency (NATS/JetStream, ClickHouse, S3, Redis, Langfuse); exit 1 when one is broken",
		Long: "doctor checks, with the same configuration as the other commands: NATS and JetStream, the streams\n" +
			strings.Join(bus.Streams, ", ") + " and the stages' durable consumers; ClickHouse and\n" +
			"the applied schema version; the S3 bucket and write/delete permission; Redis; Langfuse health and keys\n" +
			"(when langfuse.host is set). It prints one line per check (ok, skip, warn or FAIL with the fix) and\n" +
			"exits 1 when any check failed. A dependency whose address is empty is skipped.\n\n" +
			"--probe URL only GETs URL and exits 0 on a 2xx answer: the container healthcheck of the image,\n" +
			"which has no shell, curl or wget.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if probe != "" {
				if _, err := http.NewRequest(http.MethodGet, probe, nil); err != nil {
					return fmt.Errorf("%w: --probe %q: %w", errUsage, probe, err)
				}
				return doctor.Probe(cmd.Context(), probe, timeout)
			}
			cfg, _, err := a.load(cmd, nil)
			if err != nil {
				return err
			}
			checks, err := cfg.DoctorChecks(config.WorkerStageNames())
			if err != nil {
				return err
			}
			results := doctor.Run(cmd.Context(), timeout, checks...)
			if err := doctor.Print(cmd.OutOrStdout(), results); err != nil {
				return err
			}
			if doctor.Broken(results) > 0 {
				return errBroken
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "time each dependency gets to answer")
	cmd.Flags().StringVar(&probe, "probe", "", "only GET this URL (e.g. http://127.0.0.1:8081/healthz); exit 0 on 2xx, else 1")
	return cmd
}
