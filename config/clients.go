package config

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/minio/minio-go/v7"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/ingest/collector"
	"github.com/callpipe/callpipe/ingest/proxy"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/schema/capture"
	"github.com/callpipe/callpipe/serve/export"
	"github.com/callpipe/callpipe/serve/usageapi"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/store/settings"
	"github.com/callpipe/callpipe/transform"
)

// This file turns sections into the clients and options of the packages
// that use them, so that every command builds them the same way. An error
// of a section's values wraps ErrInvalid and names the key.

// ErrInvalid marks an error in the configuration's values: callpipe exits
// with status 2 on it.
var ErrInvalid = errors.New("invalid configuration")

func invalid(key string, err error) error { return fmt.Errorf("%w: %s: %w", ErrInvalid, key, err) }

// natsOptions are the nats section's connection options; the client is
// named callpipe-<name> in the server's connection list.
func (c *Config) natsOptions(name string, log *slog.Logger) (ingest.NATSOptions, error) {
	n := c.NATS
	tlsCfg, err := n.TLS.Build()
	if err != nil {
		return ingest.NATSOptions{}, invalid("nats.tls", err)
	}
	return ingest.NATSOptions{URL: n.URL, Name: "callpipe-" + name, User: n.User, Password: n.Password, Token: n.Token,
		NKeyFile: n.NKeyFile, CredsFile: n.CredsFile, TLS: tlsCfg, Logger: log}, nil
}

// ConnectNATS connects to NATS (retrying for ever in the background, as
// ingest.Connect does).
func (c *Config) ConnectNATS(name string, log *slog.Logger) (*nats.Conn, error) {
	o, err := c.natsOptions(name, log)
	if err != nil {
		return nil, err
	}
	return ingest.Connect(o)
}

// ConnectJetStream is ConnectNATS and its JetStream context.
func (c *Config) ConnectJetStream(name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := c.ConnectNATS(name, log)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// NATSDialOptions are the connection options of ConnectNATS without its
// retry-for-ever, so that an unreachable server shows its real error at once
// (doctor).
func (c *Config) NATSDialOptions(name string) ([]nats.Option, error) {
	o, err := c.natsOptions(name, nil)
	if err != nil {
		return nil, err
	}
	auth, err := ingest.AuthOptions(o)
	if err != nil {
		return nil, invalid("nats.nkey_file "+o.NKeyFile, err)
	}
	return append([]nats.Option{nats.Name(o.Name), nats.NoReconnect()}, auth...), nil
}

// Encrypted reports whether every NATS connection is encrypted: nats.tls
// enabled, or only tls:// and wss:// URLs.
func (n NATS) Encrypted() bool {
	if n.TLS.Enabled {
		return true
	}
	for _, u := range strings.Split(n.URL, ",") {
		u = strings.ToLower(strings.TrimSpace(u))
		if !strings.HasPrefix(u, "tls://") && !strings.HasPrefix(u, "wss://") {
			return false
		}
	}
	return true
}

// StreamOptions are the limits the pipeline's streams are provisioned with.
func (c *Config) StreamOptions() bus.StreamOptions {
	s := c.NATS.Stream
	return bus.StreamOptions{MaxAge: time.Duration(s.MaxAge), MaxBytes: int64(s.MaxBytes),
		DuplicateWindow: time.Duration(s.DuplicateWindow), Replicas: s.Replicas, DLQMaxAge: time.Duration(c.Transform.DLQMaxAge)}
}

// Consumers is the durable consumer of each worker stage, under the name
// the configuration gives it.
func (c *Config) Consumers() map[string]bus.Consumer {
	names := map[string]string{
		bus.StageNormalize:  c.Transform.Consumer,
		bus.StageArchive:    c.Archive.Consumer,
		bus.StageClickHouse: c.ClickHouse.Consumer,
		bus.StageLangfuse:   c.Langfuse.Consumer,
	}
	out := make(map[string]bus.Consumer, len(bus.Stages))
	for _, s := range bus.Stages {
		out[s.Name] = bus.ConsumerOf(s.Name, names[s.Name])
	}
	return out
}

// S3Client is the S3 (MinIO or AWS) client of the s3 section. maxRetries
// bounds minio-go's own retries of a request (0: its default), so that a
// caller that must answer quickly (doctor) can give up early.
func (c *Config) S3Client(maxRetries int) (*minio.Client, error) {
	s := c.S3
	tlsCfg, err := s.TLS.Build()
	if err != nil {
		return nil, invalid("s3.tls", err)
	}
	cl, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: s.Endpoint, AccessKey: s.AccessKey, SecretKey: s.SecretKey,
		Region: s.Region, UseSSL: s.Encrypted(), PathStyle: s.PathStyle, TLS: tlsCfg, MaxRetries: maxRetries})
	if err != nil {
		return nil, invalid(fmt.Sprintf("s3.endpoint %q", s.Endpoint), err)
	}
	return cl, nil
}

// Encrypted reports whether the S3 client speaks https.
func (s S3) Encrypted() bool { return s.UseSSL || s.TLS.Enabled }

// RedisClient is the client of the redis section. Requests time out after
// timeout (0: go-redis defaults).
func (c *Config) RedisClient(timeout time.Duration) (*redis.Client, error) {
	r := c.Redis
	if r.Addr == "" {
		return nil, errors.New("redis.addr is empty")
	}
	tlsCfg, err := r.TLS.Build()
	if err != nil {
		return nil, invalid("redis.tls", err)
	}
	o := &redis.Options{Addr: r.Addr, Username: r.Username, Password: r.Password, DB: r.DB,
		TLSConfig: tlsCfg, MaxRetries: -1, DisableIdentity: true}
	if timeout > 0 {
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = timeout, timeout, timeout
	}
	return redis.NewClient(o), nil
}

// CallsDB is how components reach the calls database.
func (c *Config) CallsDB() (callsdb.Config, error) {
	ch := c.ClickHouse
	tlsCfg, err := ch.TLS.Build()
	if err != nil {
		return callsdb.Config{}, invalid("clickhouse.tls", err)
	}
	return callsdb.Config{Addr: ch.Addr, Database: ch.Database, User: ch.User, Password: ch.Password, TLS: tlsCfg,
		Topology: callsdb.Topology{Cluster: ch.Cluster}, SealAfter: c.SealAfter()}, nil
}

// RequireCallsDB is CallsDB for a use that needs ClickHouse: an empty
// clickhouse.addr is a configuration error saying why it is needed.
func (c *Config) RequireCallsDB(why string) (callsdb.Config, error) {
	if c.ClickHouse.Addr == "" {
		return callsdb.Config{}, invalid("clickhouse.addr", errors.New(why))
	}
	return c.CallsDB()
}

// OpenClickHouse connects to the configured ClickHouse (callsdb.Open pings);
// an empty clickhouse.addr is a configuration error saying why it is needed.
func (c *Config) OpenClickHouse(ctx context.Context, why string) (driver.Conn, callsdb.Config, error) {
	db, err := c.RequireCallsDB(why)
	if err != nil {
		return nil, db, err
	}
	conn, err := callsdb.Open(ctx, db)
	return conn, db, err
}

// Output is the clickhouse sink's output over db.
func (ch ClickHouse) Output(db callsdb.Config) chsink.OutputConfig {
	return chsink.OutputConfig{Config: db, MaxTextBytes: int(ch.MaxTextBytes), MaxInFlight: ch.MaxInFlight}
}

// Retention is how long ClickHouse keeps calls and rollups.
func (ch ClickHouse) Retention() callsdb.Retention {
	return callsdb.Retention{Calls: ch.RetentionDays.Calls, Rollups: ch.RetentionDays.Rollups}
}

// RollupConfig is how the rollups are sealed (zones validated by Load).
func (ch ClickHouse) RollupConfig() callsdb.RollupConfig {
	r := ch.Rollup
	rc := callsdb.RollupConfig{Interval: time.Duration(r.Interval), Lease: time.Duration(r.Lease),
		SliceRows: uint64(r.SliceRows), Grace: time.Duration(r.Grace)}
	for _, z := range r.Zones {
		if loc, err := time.LoadLocation(z); err == nil {
			rc.Zones = append(rc.Zones, loc)
		}
	}
	return rc
}

// MigrateClickHouse applies the ClickHouse migrations; an empty
// clickhouse.addr skips them.
func (c *Config) MigrateClickHouse(ctx context.Context, log *slog.Logger, dropExpired bool) error {
	if c.ClickHouse.Addr == "" {
		log.Info("clickhouse.addr is empty: ClickHouse migrations skipped")
		return nil
	}
	db, err := c.CallsDB()
	if err != nil {
		return err
	}
	return callsdb.Migrate(ctx, db, c.ClickHouse.Retention(), log, dropExpired)
}

// LangfuseTLS is the client TLS of https:// Langfuse hosts (langfuse.tls;
// nil: system roots).
func (c *Config) LangfuseTLS() (*tls.Config, error) {
	t := c.Langfuse.TLS
	t.Enabled = true // the https:// scheme decides
	tc, err := t.Build()
	if err != nil {
		return nil, invalid("langfuse.tls", err)
	}
	return tc, nil
}

// ConfiguredLangfuse is the Langfuse of the configuration file and
// environment: what applies while nothing is saved in the settings bucket.
func (c *Config) ConfiguredLangfuse() settings.Langfuse {
	l := c.Langfuse
	return settings.Langfuse{Host: l.Host, PublicKey: l.PublicKey, SecretKey: l.SecretKey, ProjectID: c.Serve.LangfuseProjectID}
}

// Limits are the limits every decoder of an event applies.
func (c *Config) Limits() schema.Limits { return schema.Limits{MaxEventBytes: int(c.Event.MaxBytes)} }

// CapturePolicy is the capture section as a policy; count counts the tokens
// of an event whose payload it drops (nil: none).
func (c *Config) CapturePolicy(count capture.Counter) (*capture.Policy, error) {
	cp := c.Capture
	masks := cp.Masks
	if cp.DefaultMasks {
		masks = append(append([]string(nil), capture.DefaultMasks...), masks...)
	}
	p, err := capture.New(capture.Options{Payloads: cp.Payloads, Models: cp.PayloadsModels, Users: cp.PayloadsUsers,
		MaxChars: cp.MaxChars, Masks: masks, Count: count})
	if err != nil {
		return nil, invalid("capture", err)
	}
	return p, nil
}

// EdgeCapturePolicy is the policy of the proxy and the collector. When it
// may change a payload it counts tokens with the tokenizer normalize uses
// (transform.tokenizer) before it does. The tokenizer is loaded on the first
// count (~0.3 s, ~15 MB per encoding): an edge whose calls all report usage
// and need no redaction never loads it.
func (c *Config) EdgeCapturePolicy(log *slog.Logger) (*capture.Policy, error) {
	p, err := c.CapturePolicy(nil)
	if err != nil || !p.Redacts() {
		return p, err
	}
	var (
		once sync.Once
		n    *transform.Normalizer
	)
	count := func(ev *schema.Event) (int64, int64, bool) {
		once.Do(func() {
			tok, err := transform.NewTokenizer(c.Transform.Tokenizer, c.Transform.TokenizerModels)
			if err != nil { // not expected: config validation checked the encodings
				log.Error("transform.tokenizer: cannot load; calls redacted at the edge keep only reported usage", "err", err)
			}
			n = &transform.Normalizer{Tokenizer: tok}
		})
		return n.CountUsage(ev)
	}
	return c.CapturePolicy(count)
}

// Tokenizer is the tokenizer of transform.tokenizer and tokenizer_models.
func (c *Config) Tokenizer() (*transform.Tokenizer, error) {
	tok, err := transform.NewTokenizer(c.Transform.Tokenizer, c.Transform.TokenizerModels)
	if err != nil {
		return nil, invalid("transform.tokenizer", err)
	}
	return tok, nil
}

// Prices is the price table of transform.prices.
func (c *Config) Prices() (transform.PriceTable, error) {
	p, err := transform.ParsePrices(c.Transform.Prices)
	if err != nil {
		return nil, invalid("transform.prices", err)
	}
	return p, nil
}

// ExportRunner builds the export runner: S3 and Redis always, ClickHouse
// when withClickHouse (source calls). closeFn releases the connections.
func (c *Config) ExportRunner(ctx context.Context, log *slog.Logger, withClickHouse bool) (r *export.Runner, closeFn func(), err error) {
	s3, err := c.S3Client(0)
	if err != nil {
		return nil, nil, err
	}
	rdb, err := c.RedisClient(0)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: redis.addr: %w (export jobs keep their lease and checkpoint in Redis)", ErrInvalid, err)
	}
	closeFn = func() { _ = rdb.Close() }
	e := c.Export
	r = &export.Runner{
		S3: s3, Redis: rdb, Database: c.ClickHouse.Database, Log: log,
		Config: export.Config{
			Compression: e.Compression, PartBytes: int64(e.PartBytes), PageRows: e.PageRows,
			UploadPartSize: uint64(e.UploadPartSize), LeaseTTL: time.Duration(e.LeaseTTL),
			StateTTL: time.Duration(e.StateTTL), KeyPrefix: e.KeyPrefix,
			ArchiveBucket: c.S3.Bucket, ArchivePrefix: c.Archive.Prefix, SSE: c.S3.ServerSide(),
		},
	}
	if withClickHouse {
		conn, _, err := c.OpenClickHouse(ctx, "required to export calls")
		if err != nil {
			closeFn()
			return nil, nil, err
		}
		r.CH = conn
		closeFn = func() { _ = rdb.Close(); _ = conn.Close() }
	}
	return r, closeFn, nil
}

// LangfuseHTTPClient is an HTTP client for the Langfuse API with
// LangfuseTLS; maxIdlePerHost > 0 keeps that many idle connections a host.
func (c *Config) LangfuseHTTPClient(maxIdlePerHost int) (*http.Client, error) {
	tlsCfg, err := c.LangfuseTLS()
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	if maxIdlePerHost > 0 {
		tr.MaxIdleConnsPerHost = maxIdlePerHost
	}
	return &http.Client{Transport: tr}, nil
}

// UserOptions are how API keys resolve to users, looked up in rdb (nil:
// every key resolves to anonymous).
func (c *Config) UserOptions(rdb *redis.Client, log *slog.Logger) transform.UserOptions {
	t := c.Transform
	o := transform.UserOptions{KeyPrefix: t.UserKeyPrefix, TTL: time.Duration(t.UserCacheTTL), NegativeTTL: time.Duration(t.UserNegativeTTL),
		Timeout: time.Duration(t.UserLookupTimeout), RetryAfter: time.Duration(t.UserRetryAfter), Log: log}
	if rdb != nil {
		o.Redis = rdb // not a typed nil: a nil client means no Redis
	}
	return o
}

// Logger is the logger of the log section, writing to w.
func (l Log) Logger(w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(l.Level)) // validated at load
	opts := &slog.HandlerOptions{Level: level}
	if l.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// UsageAPIOptions are the usage API's options of the serve section; links
// are the Langfuse links of the call views, reg the metrics registry.
func (c *Config) UsageAPIOptions(links usageapi.LangfuseLinks, reg *prometheus.Registry, log *slog.Logger) usageapi.Options {
	s := c.Serve
	return usageapi.Options{Tokens: s.Tokens, ReadTokens: s.ReadTokens, OpenWrites: s.AllowUnauthenticatedWrites,
		RefreshInterval: time.Duration(s.RefreshInterval), QueryTimeout: time.Duration(s.QueryTimeout),
		Langfuse: links, Log: log, Registerer: reg, Gatherer: reg}
}

// SettingsGate is the gate of the tracing settings saved from the dashboard
// (NATS KV over nc), with the connection test's policy of
// serve.test_connection.
func (c *Config) SettingsGate(nc *nats.Conn, log *slog.Logger) (*settings.Gate, error) {
	probe := c.Serve.TestConnection.Policy()
	var err error
	if probe.TLS, err = c.LangfuseTLS(); err != nil {
		return nil, err
	}
	return &settings.Gate{NC: nc, NATSURL: c.NATS.URL, Config: c.ConfiguredLangfuse(), Replicas: c.NATS.Stream.Replicas, Log: log,
		Probe: probe, Sealer: c.Sealer()}, nil
}

// ProxyOptions are the capture proxy's options of the proxy section (an
// empty proxy.upstream is the caller's to refuse); policy is applied to
// every event before it is queued or spooled.
func (c *Config) ProxyOptions(policy *capture.Policy, reg prometheus.Registerer, log *slog.Logger) proxy.Options {
	p := c.Proxy
	upstream, _ := url.Parse(p.Upstream) // validated at load
	o := proxy.DefaultOptions(upstream)
	o.CaptureLimit, o.AskUsage, o.Instance = int(p.CaptureLimit), p.AskUsage, p.Instance
	o.SpoolDir, o.SpoolMaxBytes = c.SpoolDir(), int64(p.SpoolMaxBytes)
	o.Logger, o.Registerer, o.Capture = log, reg, policy
	return o
}

// CollectorOptions are the HTTP collector's options of the collect section.
func (c *Config) CollectorOptions(policy *capture.Policy, reg prometheus.Registerer, log *slog.Logger) collector.Options {
	k := c.Collect
	return collector.Options{MaxBodyBytes: int64(k.MaxBodyBytes), ReadTimeout: time.Duration(k.ReadTimeout), Tokens: k.Tokens,
		Limits: c.Limits(), Capture: policy, Logger: log, Registerer: reg}
}
