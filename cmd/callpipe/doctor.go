package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/store/settings"
	"github.com/callpipe/callpipe/tools/doctor"
)

func init() { registerCommand(newDoctorCommand) }

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
			checks, err := doctorChecks(cfg)
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

// doctorChecks builds one check per dependency from the configuration.
func doctorChecks(cfg *config.Config) ([]doctor.Check, error) {
	natsOpts, err := doctorNATSOptions(cfg)
	if err != nil {
		return nil, err
	}
	connect := doctor.DialNATS(cfg.NATS.URL, natsOpts)
	checks := []doctor.Check{doctor.Encrypted(doctor.NATS(connect, doctorNATSExpect(cfg)), natsTLS(cfg))}

	if cfg.ClickHouse.Addr == "" {
		checks = append(checks, doctor.Skipped("clickhouse", "clickhouse.addr is empty"))
	} else {
		oc, err := clickhouseStoreConfig(cfg)
		if err != nil {
			return nil, err
		}
		checks = append(checks, doctor.Encrypted(doctor.ClickHouse(cfg.ClickHouse.Addr, cfg.ClickHouse.Database, func(ctx context.Context) (driver.Conn, error) {
			if dl, ok := ctx.Deadline(); ok {
				oc.DialTimeout = time.Until(dl)
			}
			return callsdb.Open(ctx, oc)
		}), cfg.ClickHouse.TLS.Enabled))
	}

	if cfg.S3.Endpoint == "" {
		checks = append(checks, doctor.Skipped("s3", "s3.endpoint is empty"))
	} else {
		client, err := newS3(cfg, 1) // one retry: an unreachable endpoint must be reported within --timeout
		if err != nil {
			return nil, err
		}
		checks = append(checks, doctor.Encrypted(doctor.S3(cfg.S3.Endpoint, cfg.S3.Bucket, client), cfg.S3.UseSSL || cfg.S3.TLS.Enabled))
	}

	if cfg.Redis.Addr == "" {
		checks = append(checks, doctor.Skipped("redis", "redis.addr is empty (API keys resolve to anonymous)"))
	} else {
		rdb, err := newRedis(cfg, 0)
		if err != nil {
			return nil, err
		}
		checks = append(checks, doctor.Closing(doctor.Encrypted(doctor.Redis(cfg.Redis.Addr, rdb), cfg.Redis.TLS.Enabled), func() { _ = rdb.Close() }))
	}

	lfTLS, err := langfuseTLS(cfg)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = lfTLS
	checks = append(checks, doctor.LangfuseSettings(settings.Langfuse{Host: cfg.Langfuse.Host, PublicKey: cfg.Langfuse.PublicKey, SecretKey: cfg.Langfuse.SecretKey},
		cfg.Sealer(), &http.Client{Transport: tr}, connect))
	return checks, nil
}

// natsTLS reports whether every NATS connection is encrypted: nats.tls
// enabled, or only tls:// and wss:// URLs.
func natsTLS(cfg *config.Config) bool {
	if cfg.NATS.TLS.Enabled {
		return true
	}
	for _, u := range strings.Split(cfg.NATS.URL, ",") {
		u = strings.ToLower(strings.TrimSpace(u))
		if !strings.HasPrefix(u, "tls://") && !strings.HasPrefix(u, "wss://") {
			return false
		}
	}
	return true
}

// doctorNATSExpect lists the streams and the consumers of the stages this
// binary has, leaving out sinks that are not configured.
func doctorNATSExpect(cfg *config.Config) doctor.NATSExpect {
	configured := map[string]bool{
		bus.StageNormalize:  true,
		bus.StageArchive:    cfg.S3.Endpoint != "",
		bus.StageClickHouse: cfg.ClickHouse.Addr != "",
		bus.StageLangfuse:   cfg.Langfuse.Host != "",
	}
	runs := map[string]bool{}
	for name := range stages {
		runs[name] = configured[name]
	}
	_, langfuse := stages[bus.StageLangfuse]
	return doctor.ExpectPipeline(cfg.NATS.URL, cfg.NATS.Stream.Replicas, pipelineConsumers(cfg), runs,
		langfuse && cfg.Langfuse.Host == "") // Langfuse set up from the dashboard only: its consumer is expected too
}

// doctorNATSOptions are the connection options of ingest.Connect without its
// retry-for-ever, so that an unreachable server shows its real error at once.
func doctorNATSOptions(cfg *config.Config) ([]nats.Option, error) {
	n := cfg.NATS
	tlsCfg, err := n.TLS.Build()
	if err != nil {
		return nil, fmt.Errorf("%w: nats.tls: %w", errConfig, err)
	}
	auth, err := ingest.AuthOptions(ingest.NATSOptions{User: n.User, Password: n.Password, Token: n.Token,
		NKeyFile: n.NKeyFile, CredsFile: n.CredsFile, TLS: tlsCfg})
	if err != nil {
		return nil, fmt.Errorf("%w: nats.nkey_file %s: %w", errConfig, n.NKeyFile, err)
	}
	return append([]nats.Option{nats.Name("callpipe-doctor"), nats.NoReconnect()}, auth...), nil
}
