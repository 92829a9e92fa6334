// Package config loads callpipe's configuration: defaults, then the YAML file,
// then CALLPIPE_<SECTION>_<KEY> environment variables, then flags. Every leaf
// key carries a `doc` tag, which is the single source of the example file and
// of the flag help.
package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Config is every setting of callpipe.
type Config struct {
	Log        Log        `yaml:"log"`
	NATS       NATS       `yaml:"nats"`
	Event      Event      `yaml:"event"`
	Collect    Collect    `yaml:"collect"`
	Proxy      Proxy      `yaml:"proxy"`
	Worker     Worker     `yaml:"worker"`
	Redis      Redis      `yaml:"redis"`
	S3         S3         `yaml:"s3"`
	Langfuse   Langfuse   `yaml:"langfuse"`
	ClickHouse ClickHouse `yaml:"clickhouse"`
}

type Log struct {
	Level  string `yaml:"level" doc:"debug, info, warn or error"`
	Format string `yaml:"format" doc:"json or text"`
}

type NATS struct {
	URL       string `yaml:"url" doc:"NATS server URLs, comma separated"`
	User      string `yaml:"user" doc:"user name for user/password auth"`
	Password  string `yaml:"password" secret:"true" doc:"password for user/password auth"`
	Token     string `yaml:"token" secret:"true" doc:"token auth"`
	NKeyFile  string `yaml:"nkey_file" doc:"file holding an NKey seed (SU...)"`
	CredsFile string `yaml:"creds_file" doc:"decentralized auth .creds file (JWT + seed)"`
	TLS       TLS    `yaml:"tls"`
	Stream    Stream `yaml:"stream"`
}

type Stream struct {
	MaxAge          Duration `yaml:"max_age" doc:"how long CALLPIPE_CALLS keeps a call"`
	MaxBytes        ByteSize `yaml:"max_bytes" doc:"size cap of CALLPIPE_CALLS; 0 means unlimited"`
	DuplicateWindow Duration `yaml:"duplicate_window" doc:"window in which a repeated event id is stored once"`
	Replicas        int      `yaml:"replicas" doc:"JetStream replicas: 1 or 3"`
}

type Event struct {
	MaxBytes ByteSize `yaml:"max_bytes" doc:"largest accepted event"`
}

type Collect struct {
	Listen       string   `yaml:"listen" doc:"host:port of the collector's HTTP side"`
	MaxBodyBytes ByteSize `yaml:"max_body_bytes" doc:"largest request body (after decompression); larger gets 413"`
	Tokens       []string `yaml:"tokens" secret:"true" doc:"bearer tokens accepted on POST /v1/events (comma separated in env); empty disables auth"`
}

type Proxy struct {
	Listen        string   `yaml:"listen" doc:"host:port the proxy listens on"`
	Upstream      string   `yaml:"upstream" doc:"Xinference base URL, e.g. http://127.0.0.1:9997"`
	CaptureLimit  ByteSize `yaml:"capture_limit" doc:"request/response bytes kept in an event; the rest is forwarded but not captured"`
	AskUsage      bool     `yaml:"ask_usage" doc:"ask upstream for usage on streams that did not request it (hidden from the client)"`
	SpoolDir      string   `yaml:"spool_dir" doc:"on-disk spool for events while NATS is unreachable"`
	SpoolMaxBytes ByteSize `yaml:"spool_max_bytes" doc:"spool size cap; beyond it events are dropped, counted and logged"`
	Instance      string   `yaml:"instance" doc:"instance name recorded in events (upstream host:port when empty)"`
}

type Worker struct {
	Listen string `yaml:"listen" doc:"host:port for the worker's /healthz and /metrics"`
}

type Redis struct {
	Addr     string `yaml:"addr" doc:"host:port of Redis"`
	Username string `yaml:"username" doc:"ACL user"`
	Password string `yaml:"password" secret:"true" doc:"password"`
	DB       int    `yaml:"db" doc:"database number"`
	TLS      TLS    `yaml:"tls"`
}

type S3 struct {
	Endpoint  string `yaml:"endpoint" doc:"host:port of the S3 API (MinIO or AWS)"`
	AccessKey string `yaml:"access_key" secret:"true" doc:"access key id"`
	SecretKey string `yaml:"secret_key" secret:"true" doc:"secret access key"`
	Region    string `yaml:"region" doc:"bucket region"`
	Bucket    string `yaml:"bucket" doc:"bucket for the archive and exports"`
	UseSSL    bool   `yaml:"use_ssl" doc:"use https"`
	PathStyle bool   `yaml:"path_style" doc:"path-style bucket addressing (MinIO); false lets the client choose"`
	TLS       TLS    `yaml:"tls"`
}

type Langfuse struct {
	Host      string `yaml:"host" doc:"Langfuse base URL (also LANGFUSE_HOST / LANGFUSE_BASE_URL)"`
	PublicKey string `yaml:"public_key" doc:"project public key (also LANGFUSE_PUBLIC_KEY)"`
	SecretKey string `yaml:"secret_key" secret:"true" doc:"project secret key (also LANGFUSE_SECRET_KEY)"`
	Transport string `yaml:"transport" doc:"auto, ingestion (v3 batch API) or otlp (v4)"`
}

type ClickHouse struct {
	Addr     string `yaml:"addr" doc:"host:port of the native protocol"`
	Database string `yaml:"database" doc:"database name"`
	User     string `yaml:"user" doc:"user"`
	Password string `yaml:"password" secret:"true" doc:"password"`
	TLS      TLS    `yaml:"tls"`
}

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		Log: Log{Level: "info", Format: "json"},
		NATS: NATS{URL: "nats://127.0.0.1:4222", Stream: Stream{
			MaxAge: Duration(7 * 24 * time.Hour), DuplicateWindow: Duration(10 * time.Minute), Replicas: 1,
		}},
		Event:   Event{MaxBytes: 1 << 20},
		Collect: Collect{Listen: "127.0.0.1:8081", MaxBodyBytes: 8 << 20},
		Proxy: Proxy{Listen: "127.0.0.1:8080", CaptureLimit: 1 << 20, AskUsage: true,
			SpoolDir: "callpipe-spool", SpoolMaxBytes: 1 << 30},
		Worker:     Worker{Listen: "127.0.0.1:8082"},
		Redis:      Redis{Addr: "127.0.0.1:6379"},
		S3:         S3{Endpoint: "127.0.0.1:9000", Region: "us-east-1", Bucket: "callpipe", PathStyle: true},
		Langfuse:   Langfuse{Transport: "auto"},
		ClickHouse: ClickHouse{Addr: "127.0.0.1:9000", Database: "callpipe", User: "default"},
	}
}

// Error is an invalid setting; callpipe exits with status 2 on it.
type Error struct {
	Key, Value, Allowed string
}

func (e *Error) Error() string {
	return fmt.Sprintf("config: %s: invalid value %q: %s", e.Key, e.Value, e.Allowed)
}

// Validate checks every key and names the first bad one.
func (c *Config) Validate() error {
	check := func(ok bool, key string, value any, allowed string) error {
		if ok {
			return nil
		}
		return &Error{Key: key, Value: fmt.Sprint(value), Allowed: allowed}
	}
	hostPort := func(key, v string, required bool) error {
		if v == "" && !required {
			return nil
		}
		_, port, err := net.SplitHostPort(v)
		return check(err == nil && port != "", key, v, "must be host:port")
	}
	errs := []error{
		check(oneOf(c.Log.Level, "debug", "info", "warn", "error"), "log.level", c.Log.Level, "allowed: debug, info, warn, error"),
		check(oneOf(c.Log.Format, "json", "text"), "log.format", c.Log.Format, "allowed: json, text"),
		check(validNATSURLs(c.NATS.URL), "nats.url", c.NATS.URL, "must be comma-separated nats://, tls:// or ws:// URLs"),
		check(c.NATS.Token == "" || c.NATS.User == "", "nats.token", "(masked)", "token and user/password are exclusive"),
		check(c.NATS.Stream.Replicas == 1 || c.NATS.Stream.Replicas == 3, "nats.stream.replicas", c.NATS.Stream.Replicas, "allowed: 1 or 3"),
		check(c.NATS.Stream.MaxAge > 0, "nats.stream.max_age", c.NATS.Stream.MaxAge, "must be positive"),
		check(c.NATS.Stream.DuplicateWindow > 0 && (c.NATS.Stream.DuplicateWindow <= c.NATS.Stream.MaxAge), "nats.stream.duplicate_window", c.NATS.Stream.DuplicateWindow, "must be positive and at most nats.stream.max_age"),
		check(c.Event.MaxBytes >= 1024, "event.max_bytes", c.Event.MaxBytes, "must be at least 1KiB"),
		hostPort("collect.listen", c.Collect.Listen, true),
		check(c.Collect.MaxBodyBytes >= c.Event.MaxBytes, "collect.max_body_bytes", c.Collect.MaxBodyBytes, "must be at least event.max_bytes"),
		hostPort("proxy.listen", c.Proxy.Listen, true),
		hostPort("worker.listen", c.Worker.Listen, true),
		check(c.Proxy.Upstream == "" || validHTTPURL(c.Proxy.Upstream), "proxy.upstream", c.Proxy.Upstream, "must be an http:// or https:// URL"),
		check(c.Proxy.CaptureLimit > 0, "proxy.capture_limit", c.Proxy.CaptureLimit, "must be positive"),
		check(c.Proxy.SpoolMaxBytes > 0, "proxy.spool_max_bytes", c.Proxy.SpoolMaxBytes, "must be positive"),
		hostPort("redis.addr", c.Redis.Addr, false),
		check(c.Redis.DB >= 0 && c.Redis.DB < 16384, "redis.db", c.Redis.DB, "must be 0..16383"),
		hostPort("s3.endpoint", c.S3.Endpoint, false),
		check(c.S3.Bucket == "" || validBucket(c.S3.Bucket), "s3.bucket", c.S3.Bucket, "must be 3-63 lowercase letters, digits, dots or hyphens"),
		check(c.Langfuse.Host == "" || validHTTPURL(c.Langfuse.Host), "langfuse.host", c.Langfuse.Host, "must be an http:// or https:// URL"),
		check(oneOf(c.Langfuse.Transport, "auto", "ingestion", "otlp"), "langfuse.transport", c.Langfuse.Transport, "allowed: auto, ingestion, otlp"),
		hostPort("clickhouse.addr", c.ClickHouse.Addr, false),
		check(validIdent(c.ClickHouse.Database), "clickhouse.database", c.ClickHouse.Database, "must be letters, digits and underscores, not starting with a digit"),
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func oneOf(v string, allowed ...string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

func validNATSURLs(s string) bool {
	if strings.TrimSpace(s) == "" {
		return false
	}
	for _, part := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil || u.Host == "" || !oneOf(u.Scheme, "nats", "tls", "ws", "wss") {
			return false
		}
	}
	return true
}

func validHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func validBucket(s string) bool {
	if len(s) < 3 || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return false
		}
	}
	return true
}

func validIdent(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}
