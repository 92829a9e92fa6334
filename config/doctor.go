package config

import (
	"context"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/store/settings"
	"github.com/callpipe/callpipe/tools/doctor"
)

// DoctorChecks are the checks of `callpipe doctor`: one per dependency the
// configuration names (skipped when its address is empty); built are the
// worker stages the binary has.
func (c *Config) DoctorChecks(built []string) ([]doctor.Check, error) {
	natsOpts, err := c.NATSDialOptions("doctor")
	if err != nil {
		return nil, err
	}
	connect := doctor.DialNATS(c.NATS.URL, natsOpts)
	checks := []doctor.Check{doctor.Encrypted(doctor.NATS(connect, c.doctorNATSExpect(built)), c.NATS.Encrypted())}

	if c.ClickHouse.Addr == "" {
		checks = append(checks, doctor.Skipped("clickhouse", "clickhouse.addr is empty"))
	} else {
		oc, err := c.CallsDB()
		if err != nil {
			return nil, err
		}
		checks = append(checks, doctor.Encrypted(doctor.ClickHouse(c.ClickHouse.Addr, c.ClickHouse.Database, func(ctx context.Context) (driver.Conn, error) {
			if dl, ok := ctx.Deadline(); ok {
				oc.DialTimeout = time.Until(dl)
			}
			return callsdb.Open(ctx, oc)
		}), c.ClickHouse.TLS.Enabled))
	}

	if c.S3.Endpoint == "" {
		checks = append(checks, doctor.Skipped("s3", "s3.endpoint is empty"))
	} else {
		client, err := c.S3Client(1) // one retry: an unreachable endpoint must be reported within --timeout
		if err != nil {
			return nil, err
		}
		checks = append(checks, doctor.Encrypted(doctor.S3(c.S3.Endpoint, c.S3.Bucket, client), c.S3.Encrypted()))
	}

	if c.Redis.Addr == "" {
		checks = append(checks, doctor.Skipped("redis", "redis.addr is empty (API keys resolve to anonymous)"))
	} else {
		rdb, err := c.RedisClient(0)
		if err != nil {
			return nil, err
		}
		checks = append(checks, doctor.Closing(doctor.Encrypted(doctor.Redis(c.Redis.Addr, rdb), c.Redis.TLS.Enabled), func() { _ = rdb.Close() }))
	}

	hc, err := c.LangfuseHTTPClient(0)
	if err != nil {
		return nil, err
	}
	l := c.Langfuse
	return append(checks, doctor.LangfuseSettings(settings.Langfuse{Host: l.Host, PublicKey: l.PublicKey, SecretKey: l.SecretKey}, c.Sealer(), hc, connect)), nil
}

// doctorNATSExpect lists the streams and the consumers of the stages this
// binary has, leaving out sinks that are not configured.
func (c *Config) doctorNATSExpect(built []string) doctor.NATSExpect {
	configured := map[string]bool{
		bus.StageNormalize:  true,
		bus.StageArchive:    c.S3.Endpoint != "",
		bus.StageClickHouse: c.ClickHouse.Addr != "",
		bus.StageLangfuse:   c.Langfuse.Host != "",
	}
	runs := map[string]bool{}
	for _, name := range built {
		runs[name] = configured[name]
	}
	langfuse := slices.Contains(built, bus.StageLangfuse)
	return doctor.ExpectPipeline(c.NATS.URL, c.NATS.Stream.Replicas, c.Consumers(), runs,
		langfuse && c.Langfuse.Host == "") // Langfuse set up from the dashboard only: its consumer is expected too
}
