// Package config loads callpipe's configuration: defaults, then the YAML file,
// then CALLPIPE_<SECTION>_<KEY> environment variables, then flags. Every leaf
// key carries a `doc` tag, which is the single source of the example file and
// of the flag help.
//
// It also builds what the sections describe (clients.go, stages.go,
// doctor.go): the NATS, S3, Redis and ClickHouse clients, the capture policy,
// the worker stages and doctor's checks, so that every command of
// cmd/callpipe builds them one way. It sits above every other package and
// below cmd only.
package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/callpipe/callpipe/bus"
)

// Config is every setting of callpipe.
type Config struct {
	Log        Log        `yaml:"log"`
	Paths      Paths      `yaml:"paths"`
	NATS       NATS       `yaml:"nats"`
	Event      Event      `yaml:"event"`
	Collect    Collect    `yaml:"collect"`
	Proxy      Proxy      `yaml:"proxy"`
	Worker     Worker     `yaml:"worker"`
	Transform  Transform  `yaml:"transform"`
	Capture    Capture    `yaml:"capture"`
	Redis      Redis      `yaml:"redis"`
	S3         S3         `yaml:"s3"`
	Langfuse   Langfuse   `yaml:"langfuse"`
	ClickHouse ClickHouse `yaml:"clickhouse"`
	Archive    Archive    `yaml:"archive"`
	Export     Export     `yaml:"export"`
	Serve      Serve      `yaml:"serve"`
}

type Log struct {
	Level  string `yaml:"level" doc:"debug, info, warn or error"`
	Format string `yaml:"format" doc:"json or text"`
}

// Paths are where callpipe keeps files on disk. Every default file path is
// under StateDir, so that one setting (or one volume) holds them all and a
// checkout's .gitignore covers them.
type Paths struct {
	StateDir string `yaml:"state_dir" doc:"folder of every default file path: the proxy spool (<state_dir>/spool), bench and demo logs (<state_dir>/bench, <state_dir>/demo); relative to the working directory"`
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
	ReadTimeout  Duration `yaml:"read_timeout" doc:"a request body not fully received within this is answered 408 (slow clients cannot hold connections)"`
}

type Proxy struct {
	Listen        string   `yaml:"listen" doc:"host:port the proxy listens on"`
	Upstream      string   `yaml:"upstream" doc:"Xinference base URL, e.g. http://127.0.0.1:9997"`
	CaptureLimit  ByteSize `yaml:"capture_limit" doc:"request/response bytes kept in an event; the rest is forwarded but not captured"`
	AskUsage      bool     `yaml:"ask_usage" doc:"ask upstream for usage on streams that did not request it (hidden from the client)"`
	SpoolDir      string   `yaml:"spool_dir" doc:"on-disk spool for events while NATS is unreachable; empty means <paths.state_dir>/spool"`
	SpoolMaxBytes ByteSize `yaml:"spool_max_bytes" doc:"spool size cap; beyond it events are dropped, counted and logged"`
	Instance      string   `yaml:"instance" doc:"instance name recorded in events (when empty: the model UID the upstream answered with, else its host:port; the host:port is kept in metadata proxy.upstream)"`
	Procs         int      `yaml:"procs" doc:"CPUs the proxy runs Go code on at once (GOMAXPROCS; the GOMAXPROCS environment variable wins); 1 keeps a call's hand-offs between goroutines on one thread, which costs less CPU and latency per call than waking another; 0 means one per CPU"`
}

type Worker struct {
	Listen string `yaml:"listen" doc:"host:port for the worker's /healthz and /metrics"`
}

type Transform struct {
	Consumer          string   `yaml:"consumer" doc:"durable consumer on CALLPIPE_CALLS shared by every normalize worker"`
	Subject           string   `yaml:"subject" doc:"subjects of CALLPIPE_CALLS the normalize stage consumes"`
	Concurrency       int      `yaml:"concurrency" doc:"normalize pipelines per worker process; 0 means one per CPU"`
	Batch             int      `yaml:"batch" doc:"raw events buffered per pull request"`
	MaxInFlight       int      `yaml:"max_in_flight" doc:"normalized records awaiting a JetStream ack, per pipeline"`
	AckWait           Duration `yaml:"ack_wait" doc:"a raw event not acknowledged within this is redelivered"`
	MaxDeliver        int      `yaml:"max_deliver" doc:"deliveries of a raw event before it is dead-lettered"`
	MaxAckPending     int      `yaml:"max_ack_pending" doc:"unacknowledged raw events across all normalize workers"`
	RetryDelay        Duration `yaml:"retry_delay" doc:"first redelivery delay after a transient failure (doubles per delivery, at most 1m)"`
	DLQMaxAge         Duration `yaml:"dlq_max_age" doc:"how long CALLPIPE_DLQ keeps a dead letter"`
	Tokenizer         string   `yaml:"tokenizer" doc:"BPE vocabulary for estimated token counts: o200k_base or cl100k_base"`
	TokenizerModels   []string `yaml:"tokenizer_models" doc:"per-model vocabularies as PATTERN=ENCODING (glob over the lower-cased model name), first match wins"`
	Prices            []string `yaml:"prices" doc:"model prices as PATTERN=INPUT/OUTPUT in USD per 1M tokens (glob over the lower-cased model name, e.g. qwen2.5-*=0.5/1.5); unknown models get no cost"`
	UserKeyPrefix     string   `yaml:"user_key_prefix" doc:"Redis key prefix of registered API keys (stored as SHA-256 hashes)"`
	UserCacheTTL      Duration `yaml:"user_cache_ttl" doc:"how long a resolved API-key user is cached in process"`
	UserNegativeTTL   Duration `yaml:"user_negative_ttl" doc:"how long an unregistered API key is cached as unknown"`
	UserLookupTimeout Duration `yaml:"user_lookup_timeout" doc:"timeout of one Redis user lookup; after a failure Redis is skipped for user_retry_after"`
	UserRetryAfter    Duration `yaml:"user_retry_after" doc:"how long user lookups skip Redis after a failure (records not in the cache are marked unresolved)"`
}

type Capture struct {
	Payloads       string   `yaml:"payloads" doc:"payload kept of each call, applied by the proxy, the collector and normalize before anything is published or stored: full, truncated or none"`
	PayloadsModels []string `yaml:"payloads_models" doc:"per-model payload modes as PATTERN=full|truncated|none (glob over the lower-cased model name), first match wins"`
	PayloadsUsers  []string `yaml:"payloads_users" doc:"per-user payload modes as PATTERN=full|truncated|none (glob over the lower-cased user the event names), first match wins; when a model rule also matches, the stricter mode wins"`
	MaxChars       int      `yaml:"max_chars" doc:"characters kept of each input and output text in truncated mode"`
	DefaultMasks   bool     `yaml:"default_masks" doc:"replace e-mail addresses, phone numbers and API-key-like strings in input, output, error and metadata by [REDACTED]"`
	Masks          []string `yaml:"masks" doc:"more regular expressions (RE2 syntax) whose matches are replaced by [REDACTED]"`
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
	SSE       string `yaml:"sse" doc:"server-side encryption asked for on every archive and export object: none (the bucket's default applies), sse-s3 (keys managed by the server; MinIO needs a KMS, e.g. MINIO_KMS_SECRET_KEY) or sse-kms (with sse_kms_key_id)"`
	SSEKMSKey string `yaml:"sse_kms_key_id" doc:"KMS key id of sse-kms"`
}

type Langfuse struct {
	Host      string `yaml:"host" doc:"Langfuse base URL (also LANGFUSE_HOST / LANGFUSE_BASE_URL)"`
	PublicKey string `yaml:"public_key" doc:"project public key (also LANGFUSE_PUBLIC_KEY)"`
	SecretKey string `yaml:"secret_key" secret:"true" doc:"project secret key (also LANGFUSE_SECRET_KEY)"`
	Transport string `yaml:"transport" doc:"auto, ingestion (v3 batch API) or otlp (v4)"`
	// SettingsKey is the one key of the settings bucket's encryption.
	// TLS applies to https:// hosts (the scheme turns TLS on; enabled is ignored).
	TLS         TLS    `yaml:"tls"`
	SettingsKey string `yaml:"settings_key" secret:"true" doc:"32 random bytes, base64 (openssl rand -base64 32): seals (AES-256-GCM) the secret key saved from the dashboard in the NATS KV bucket; serve and every langfuse worker need the same key; empty: no secret can be saved from the dashboard"`

	Consumer       string   `yaml:"consumer" doc:"durable consumer on CALLPIPE_NORMALIZED shared by every langfuse worker"`
	Subject        string   `yaml:"subject" doc:"subjects of CALLPIPE_NORMALIZED the langfuse stage consumes"`
	Environment    string   `yaml:"environment" doc:"Langfuse environment of every trace and generation (lower case letters, digits, - and _, at most 40, not starting with langfuse); empty means Langfuse's default"`
	Release        string   `yaml:"release" doc:"release recorded on every trace; empty sends none"`
	BatchCalls     int      `yaml:"batch_calls" doc:"calls fetched from JetStream and written as one batch"`
	FlushInterval  Duration `yaml:"flush_interval" doc:"longest wait for batch_calls calls before writing what arrived"`
	MaxBatchBytes  ByteSize `yaml:"max_batch_bytes" doc:"request body cap of POST /api/public/ingestion (Langfuse documents 3.5 MB; the server refuses over 4.5 MB)"`
	MaxBatchEvents int      `yaml:"max_batch_events" doc:"events per ingestion request (each call is a trace and a generation)"`
	MaxFieldBytes  ByteSize `yaml:"max_field_bytes" doc:"input and output are each cut to this size with a visible truncation marker; 0 keeps all"`
	MaxInFlight    int      `yaml:"max_in_flight" doc:"ingestion requests running at once"`
	Retries        int      `yaml:"retries" doc:"retries of a failed request (429, 5xx, network, per-event 5xx) before the calls are redelivered after retry_delay"`
	MinBackoff     Duration `yaml:"min_backoff" doc:"first retry wait; doubles per retry with jitter, at most max_backoff (a longer Retry-After wins)"`
	MaxBackoff     Duration `yaml:"max_backoff" doc:"longest retry wait"`
	RequestTimeout Duration `yaml:"request_timeout" doc:"timeout of one request to Langfuse"`
	RetryDelay     Duration `yaml:"retry_delay" doc:"redelivery delay of calls Langfuse has not accepted yet; also the first pause after a 401/403, doubling per refusal up to 2m"`
	AckWait        Duration `yaml:"ack_wait" doc:"a call not settled within this is redelivered (kept alive while its batch is being retried)"`
}

// DefaultStateDir is paths.state_dir when nothing sets it: a dot folder of the
// working directory (as Prometheus keeps data/ there), which a checkout's
// .gitignore covers; deployments set an absolute path on a volume.
const DefaultStateDir = ".state"

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		Log:   Log{Level: "info", Format: "json"},
		Paths: Paths{StateDir: DefaultStateDir},
		NATS: NATS{URL: "nats://127.0.0.1:4222", Stream: Stream{
			MaxAge: Duration(7 * 24 * time.Hour), DuplicateWindow: Duration(10 * time.Minute), Replicas: 1,
		}},
		Event:   Event{MaxBytes: 1 << 20},
		Collect: Collect{Listen: "127.0.0.1:8081", MaxBodyBytes: 8 << 20, ReadTimeout: Duration(30 * time.Second)},
		Proxy: Proxy{Listen: "127.0.0.1:8080", CaptureLimit: 1 << 20, AskUsage: true,
			SpoolMaxBytes: 1 << 30, Procs: 1},
		Worker: Worker{Listen: "127.0.0.1:8082"},
		Transform: Transform{Consumer: bus.StageOf(bus.StageNormalize).Consumer, Subject: bus.StageOf(bus.StageNormalize).Subject, Batch: 500, MaxInFlight: 1000,
			AckWait: Duration(30 * time.Second), MaxDeliver: 10, MaxAckPending: 20000, RetryDelay: Duration(time.Second),
			DLQMaxAge: Duration(30 * 24 * time.Hour), Tokenizer: "o200k_base", UserKeyPrefix: "callpipe:apikey:",
			UserCacheTTL: Duration(5 * time.Minute), UserNegativeTTL: Duration(time.Minute),
			UserLookupTimeout: Duration(time.Second), UserRetryAfter: Duration(time.Second)},
		Capture: Capture{Payloads: "full", MaxChars: 2000, DefaultMasks: true},
		Redis:   Redis{Addr: "127.0.0.1:6379"},
		S3:      S3{Endpoint: "127.0.0.1:9000", Region: "us-east-1", Bucket: "callpipe", PathStyle: true, SSE: "none"},
		Langfuse: Langfuse{Transport: "auto", Consumer: bus.StageOf(bus.StageLangfuse).Consumer, Subject: bus.StageOf(bus.StageLangfuse).Subject, BatchCalls: 500, FlushInterval: Duration(time.Second),
			MaxBatchBytes: 3_500_000, MaxBatchEvents: 1000, MaxFieldBytes: 256 << 10, MaxInFlight: 4, Retries: 8,
			MinBackoff: Duration(500 * time.Millisecond), MaxBackoff: Duration(30 * time.Second), RequestTimeout: Duration(30 * time.Second),
			RetryDelay: Duration(5 * time.Second), AckWait: Duration(2 * time.Minute)},
		ClickHouse: defaultClickHouse(),
		Archive:    defaultArchive(),
		Export:     defaultExport(),
		Serve:      defaultServe(),
	}
}

// Error is an invalid setting; callpipe exits with status 2 on it.
type Error struct {
	Key, Value, Allowed string
}

func (e *Error) Error() string {
	return fmt.Sprintf("config: %s: invalid value %q: %s", e.Key, e.Value, e.Allowed)
}

// SpoolDir is the proxy's spool folder: proxy.spool_dir, or spool under
// paths.state_dir when that is empty.
func (c *Config) SpoolDir() string {
	if c.Proxy.SpoolDir != "" {
		return c.Proxy.SpoolDir
	}
	return filepath.Join(c.Paths.StateDir, "spool")
}

// Validate checks every key and names the first bad one.
func (c *Config) Validate() error {
	hostPort := func(key, v string, required bool) error {
		return checkKey(validHostPort(v) || v == "" && !required, key, v, "must be host:port")
	}
	errs := []error{
		checkKey(oneOf(c.Log.Level, "debug", "info", "warn", "error"), "log.level", c.Log.Level, "allowed: debug, info, warn, error"),
		checkKey(oneOf(c.Log.Format, "json", "text"), "log.format", c.Log.Format, "allowed: json, text"),
		checkKey(validNATSURLs(c.NATS.URL), "nats.url", c.NATS.URL, "must be comma-separated nats://, tls:// or ws:// URLs"),
		checkKey(c.NATS.Token == "" || c.NATS.User == "", "nats.token", "(masked)", "token and user/password are exclusive"),
		checkKey(c.NATS.Stream.Replicas == 1 || c.NATS.Stream.Replicas == 3, "nats.stream.replicas", c.NATS.Stream.Replicas, "allowed: 1 or 3"),
		checkKey(c.NATS.Stream.MaxAge > 0, "nats.stream.max_age", c.NATS.Stream.MaxAge, "must be positive"),
		checkKey(c.NATS.Stream.DuplicateWindow > 0 && (c.NATS.Stream.DuplicateWindow <= c.NATS.Stream.MaxAge), "nats.stream.duplicate_window", c.NATS.Stream.DuplicateWindow, "must be positive and at most nats.stream.max_age"),
		checkKey(c.Event.MaxBytes >= 1024, "event.max_bytes", c.Event.MaxBytes, "must be at least 1KiB"),
		hostPort("collect.listen", c.Collect.Listen, true),
		checkKey(c.Collect.ReadTimeout >= Duration(100*time.Millisecond), "collect.read_timeout", c.Collect.ReadTimeout, "must be at least 100ms"),
		checkKey(c.Collect.MaxBodyBytes >= c.Event.MaxBytes, "collect.max_body_bytes", c.Collect.MaxBodyBytes, "must be at least event.max_bytes"),
		hostPort("proxy.listen", c.Proxy.Listen, true),
		hostPort("worker.listen", c.Worker.Listen, true),
		checkKey(c.Proxy.Upstream == "" || validHTTPURL(c.Proxy.Upstream), "proxy.upstream", c.Proxy.Upstream, "must be an http:// or https:// URL"),
		checkKey(c.Proxy.CaptureLimit > 0, "proxy.capture_limit", c.Proxy.CaptureLimit, "must be positive"),
		checkKey(c.Paths.StateDir != "", "paths.state_dir", c.Paths.StateDir, "must not be empty"),
		checkKey(c.Proxy.SpoolMaxBytes > 0, "proxy.spool_max_bytes", c.Proxy.SpoolMaxBytes, "must be positive"),
		checkKey(c.Proxy.Procs >= 0 && c.Proxy.Procs <= 1024, "proxy.procs", c.Proxy.Procs, "must be 0..1024"),
		checkConsumer(bus.StageNormalize, "transform", c.Transform.Consumer, c.Transform.Subject),
		checkKey(c.Transform.Concurrency >= 0 && c.Transform.Concurrency <= 1024, "transform.concurrency", c.Transform.Concurrency, "must be 0..1024"),
		checkKey(c.Transform.Batch >= 1 && c.Transform.Batch <= 10000, "transform.batch", c.Transform.Batch, "must be 1..10000"),
		checkKey(c.Transform.MaxInFlight >= 1 && c.Transform.MaxInFlight <= 100000, "transform.max_in_flight", c.Transform.MaxInFlight, "must be 1..100000"),
		checkKey(c.Transform.AckWait >= Duration(time.Second), "transform.ack_wait", c.Transform.AckWait, "must be at least 1s"),
		checkKey(c.Transform.MaxDeliver >= 1, "transform.max_deliver", c.Transform.MaxDeliver, "must be at least 1"),
		checkKey(c.Transform.MaxAckPending >= c.Transform.Batch, "transform.max_ack_pending", c.Transform.MaxAckPending, "must be at least transform.batch"),
		checkKey(c.Transform.RetryDelay > 0, "transform.retry_delay", c.Transform.RetryDelay, "must be positive"),
		checkKey(c.Transform.DLQMaxAge > 0, "transform.dlq_max_age", c.Transform.DLQMaxAge, "must be positive"),
		checkKey(oneOf(c.Transform.Tokenizer, "o200k_base", "cl100k_base"), "transform.tokenizer", c.Transform.Tokenizer, "allowed: o200k_base, cl100k_base"),
		validTokenizerModels(c.Transform.TokenizerModels),
		validPrices(c.Transform.Prices),
		checkKey(c.Transform.UserKeyPrefix != "", "transform.user_key_prefix", c.Transform.UserKeyPrefix, "must not be empty"),
		checkKey(c.Transform.UserCacheTTL > 0, "transform.user_cache_ttl", c.Transform.UserCacheTTL, "must be positive"),
		checkKey(c.Transform.UserNegativeTTL > 0, "transform.user_negative_ttl", c.Transform.UserNegativeTTL, "must be positive"),
		checkKey(c.Transform.UserLookupTimeout > 0, "transform.user_lookup_timeout", c.Transform.UserLookupTimeout, "must be positive"),
		checkKey(c.Transform.UserRetryAfter > 0, "transform.user_retry_after", c.Transform.UserRetryAfter, "must be positive"),
		checkKey(oneOf(c.Capture.Payloads, "full", "truncated", "none"), "capture.payloads", c.Capture.Payloads, "allowed: full, truncated, none"),
		validPayloadRules("capture.payloads_models", c.Capture.PayloadsModels),
		validPayloadRules("capture.payloads_users", c.Capture.PayloadsUsers),
		checkKey(c.Capture.MaxChars >= 1, "capture.max_chars", c.Capture.MaxChars, "must be at least 1"),
		validMasks(c.Capture.Masks),
		hostPort("redis.addr", c.Redis.Addr, false),
		checkKey(c.Redis.DB >= 0 && c.Redis.DB < 16384, "redis.db", c.Redis.DB, "must be 0..16383"),
		hostPort("s3.endpoint", c.S3.Endpoint, false),
		checkKey(oneOf(c.S3.SSE, "none", "sse-s3", "sse-kms"), "s3.sse", c.S3.SSE, "allowed: none, sse-s3, sse-kms"),
		checkKey((c.S3.SSE == "sse-kms") == (c.S3.SSEKMSKey != ""), "s3.sse_kms_key_id", c.S3.SSEKMSKey, "required with s3.sse sse-kms, and only with it"),
		checkKey(c.S3.Bucket == "" || validBucket(c.S3.Bucket), "s3.bucket", c.S3.Bucket, "must be 3-63 lowercase letters, digits, dots or hyphens"),
		checkKey(c.Langfuse.Host == "" || validHTTPURL(c.Langfuse.Host), "langfuse.host", c.Langfuse.Host, "must be an http:// or https:// URL"),
		checkKey(oneOf(c.Langfuse.Transport, "auto", "ingestion", "otlp"), "langfuse.transport", c.Langfuse.Transport, "allowed: auto, ingestion, otlp"),
		validSettingsKey(c.Langfuse.SettingsKey),
		checkConsumer(bus.StageLangfuse, "langfuse", c.Langfuse.Consumer, c.Langfuse.Subject),
		checkKey(validLangfuseEnv(c.Langfuse.Environment), "langfuse.environment", c.Langfuse.Environment, "must be lower case letters, digits, - and _, at most 40, not starting with langfuse"),
		checkKey(c.Langfuse.BatchCalls >= 1 && c.Langfuse.BatchCalls <= 10000, "langfuse.batch_calls", c.Langfuse.BatchCalls, "must be 1..10000"),
		checkKey(c.Langfuse.FlushInterval > 0, "langfuse.flush_interval", c.Langfuse.FlushInterval, "must be positive"),
		checkKey(c.Langfuse.MaxBatchBytes >= 64<<10 && c.Langfuse.MaxBatchBytes <= 4_500_000, "langfuse.max_batch_bytes", c.Langfuse.MaxBatchBytes, "must be 64KiB..4.5MB (Langfuse refuses larger bodies)"),
		checkKey(c.Langfuse.MaxBatchEvents >= 2 && c.Langfuse.MaxBatchEvents <= 10000, "langfuse.max_batch_events", c.Langfuse.MaxBatchEvents, "must be 2..10000"),
		checkKey(c.Langfuse.MaxFieldBytes >= 0 && c.Langfuse.MaxFieldBytes < c.Langfuse.MaxBatchBytes/2, "langfuse.max_field_bytes", c.Langfuse.MaxFieldBytes, "must be 0..max_batch_bytes/2"),
		checkKey(c.Langfuse.MaxInFlight >= 1 && c.Langfuse.MaxInFlight <= 64, "langfuse.max_in_flight", c.Langfuse.MaxInFlight, "must be 1..64"),
		checkKey(c.Langfuse.Retries >= 0 && c.Langfuse.Retries <= 100, "langfuse.retries", c.Langfuse.Retries, "must be 0..100"),
		checkKey(c.Langfuse.MinBackoff > 0 && c.Langfuse.MinBackoff <= c.Langfuse.MaxBackoff, "langfuse.min_backoff", c.Langfuse.MinBackoff, "must be positive and at most max_backoff"),
		checkKey(c.Langfuse.RequestTimeout > 0, "langfuse.request_timeout", c.Langfuse.RequestTimeout, "must be positive"),
		checkKey(c.Langfuse.RetryDelay > 0, "langfuse.retry_delay", c.Langfuse.RetryDelay, "must be positive"),
		checkKey(c.Langfuse.AckWait >= Duration(3*time.Second), "langfuse.ack_wait", c.Langfuse.AckWait, "must be at least 3s"),
	}
	errs = append(errs, c.validateClickHouse()...)
	errs = append(errs, c.validateArchive()...)
	errs = append(errs, c.validateExport()...)
	errs = append(errs, c.validateServe()...)
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// checkKey is an *Error for key unless ok.
func checkKey(ok bool, key string, value any, allowed string) error {
	if ok {
		return nil
	}
	return &Error{Key: key, Value: fmt.Sprint(value), Allowed: allowed}
}

// checkConsumer checks a stage's durable consumer name and subject filter,
// the keys <section>.consumer and <section>.subject, and names the first bad
// one.
func checkConsumer(stage, section, consumer, subject string) error {
	if err := checkKey(validIdent(replaceDash(consumer)), section+".consumer", consumer, "must be letters, digits, - and _"); err != nil {
		return err
	}
	return checkSubject(stage, section+".subject", subject)
}

// checkSubject is an *Error for key unless subject is a filter under the
// prefix of the stream stage reads.
func checkSubject(stage, key, subject string) error {
	if err := bus.ValidSubject(bus.StageOf(stage).Reads, subject); err != nil {
		return &Error{Key: key, Value: subject, Allowed: err.Error()}
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
