// Package harness gives integration tests the addresses of callpipe's backing
// services: NATS (JetStream), ClickHouse, S3 (MinIO) and Redis.
//
// For each service, in order:
//
//  1. If the service's CALLPIPE_* environment variables are set (normally by
//     sourcing the env file written by `go tool task services:up`, i.e.
//     deploy/local/services.sh), they are returned as they are.
//  2. Otherwise, if a Docker engine is reachable, a throwaway container of the
//     official image is started with testcontainers-go and removed when the
//     test ends.
//  3. Otherwise the test is skipped, or fails when the CI environment variable
//     is non-empty (so CI can never pass by silently skipping).
//
// StopService and StartService stop/start one of the services run by
// deploy/local/services.sh, for outage tests.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/callpipe/callpipe/internal/fleet"
)

// Environment variables read by the harness (written by deploy/local/services.sh).
const (
	EnvNATSURL            = "CALLPIPE_NATS_URL"
	EnvClickHouseAddr     = "CALLPIPE_CLICKHOUSE_ADDR"
	EnvClickHouseHTTPAddr = "CALLPIPE_CLICKHOUSE_HTTP_ADDR"
	EnvS3Endpoint         = "CALLPIPE_S3_ENDPOINT"
	EnvS3AccessKey        = "CALLPIPE_S3_ACCESS_KEY"
	EnvS3SecretKey        = "CALLPIPE_S3_SECRET_KEY"
	EnvS3UseSSL           = "CALLPIPE_S3_USE_SSL"
	EnvRedisAddr          = "CALLPIPE_REDIS_ADDR"

	// EnvServicesManaged is "1" when the services were started by deploy/local/services.sh.
	EnvServicesManaged = "CALLPIPE_SERVICES_MANAGED"
	// EnvServicesScript optionally points at deploy/local/services.sh.
	EnvServicesScript = "CALLPIPE_SERVICES_SCRIPT"
	// EnvCI non-empty turns every skip for a missing service into a failure.
	EnvCI = "CI"
)

// Names of the services accepted by StopService and StartService.
const (
	ServiceNATS       = "nats"
	ServiceClickHouse = "clickhouse"
	ServiceMinIO      = "minio"
	ServiceRedis      = "redis"
)

// Container images used when no CALLPIPE_* variables are set but Docker is reachable.
const (
	ImageNATS       = "nats:2.11"
	ImageClickHouse = "clickhouse/clickhouse-server:24.8"
	ImageMinIO      = "minio/minio"
	ImageRedis      = "redis:7"
)

const setupHint = "start local services with `go tool task services:up` and load their env " +
	"(`eval \"$(bash deploy/local/services.sh env)\"`), or make a Docker engine reachable"

// ClickHouseAddr holds ClickHouse's native-protocol and HTTP host:port addresses.
type ClickHouseAddr struct {
	Native string // host:port of the native (TCP) protocol
	HTTP   string // host:port of the HTTP interface
}

// S3Config describes an S3-compatible endpoint (MinIO).
type S3Config struct {
	Endpoint  string // host:port, no scheme
	AccessKey string
	SecretKey string
	UseSSL    bool
}

// NATS returns the URL of a NATS server with JetStream enabled.
func NATS(t testing.TB) string {
	t.Helper()
	if v, ok := fromEnv(t, EnvNATSURL); ok {
		return v[0]
	}
	requireDocker(t, EnvNATSURL)
	c := startContainer(t, testcontainers.ContainerRequest{
		Image:        ImageNATS,
		Cmd:          []string{"-js"},
		ExposedPorts: []string{"4222/tcp"},
		WaitingFor:   wait.ForLog("Server is ready").WithStartupTimeout(2 * time.Minute),
	})
	return "nats://" + hostPort(t, c, "4222/tcp")
}

// ClickHouse returns the addresses of a ClickHouse server whose default user has no password.
func ClickHouse(t testing.TB) ClickHouseAddr {
	t.Helper()
	if v, ok := fromEnv(t, EnvClickHouseAddr, EnvClickHouseHTTPAddr); ok {
		return ClickHouseAddr{Native: v[0], HTTP: v[1]}
	}
	requireDocker(t, EnvClickHouseAddr, EnvClickHouseHTTPAddr)
	c := startContainer(t, testcontainers.ContainerRequest{
		Image:        ImageClickHouse,
		ExposedPorts: []string{"9000/tcp", "8123/tcp"},
		// Keep the image's entrypoint from rewriting the default user; our users.d file
		// below opens it (no password) to the Docker network, like services.sh does on loopback.
		Env: map[string]string{"CLICKHOUSE_SKIP_USER_SETUP": "1"},
		Files: []testcontainers.ContainerFile{
			{
				Reader:            strings.NewReader(clickhouseUsersXML),
				ContainerFilePath: "/etc/clickhouse-server/users.d/zz-callpipe.xml",
				FileMode:          0o644,
			},
			{
				Reader:            strings.NewReader(clickhouseConfigXML),
				ContainerFilePath: "/etc/clickhouse-server/config.d/zz-callpipe.xml",
				FileMode:          0o644,
			},
		},
		WaitingFor: wait.ForHTTP("/ping").WithPort("8123/tcp").WithStartupTimeout(2 * time.Minute),
	})
	return ClickHouseAddr{Native: hostPort(t, c, "9000/tcp"), HTTP: hostPort(t, c, "8123/tcp")}
}

const clickhouseUsersXML = `<clickhouse>
  <users>
    <default>
      <password></password>
      <networks replace="replace"><ip>::/0</ip></networks>
    </default>
  </users>
</clickhouse>
`

const clickhouseConfigXML = `<clickhouse>
  <timezone>UTC</timezone>
</clickhouse>
`

// S3 returns the endpoint and credentials of an S3-compatible server (MinIO).
func S3(t testing.TB) S3Config {
	t.Helper()
	if v, ok := fromEnv(t, EnvS3Endpoint, EnvS3AccessKey, EnvS3SecretKey); ok {
		cfg := S3Config{Endpoint: v[0], AccessKey: v[1], SecretKey: v[2]}
		if s := os.Getenv(EnvS3UseSSL); s != "" {
			b, err := strconv.ParseBool(s)
			if err != nil {
				t.Fatalf("harness: %s=%q is not a boolean: %v", EnvS3UseSSL, s, err)
			}
			cfg.UseSSL = b
		}
		return cfg
	}
	requireDocker(t, EnvS3Endpoint, EnvS3AccessKey, EnvS3SecretKey)
	user, pass := "callpipe"+randomHex(t, 6), randomHex(t, 20)
	c := startContainer(t, testcontainers.ContainerRequest{
		Image:        ImageMinIO,
		Cmd:          []string{"server", "/data"},
		Env:          map[string]string{"MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": pass, "MINIO_BROWSER": "off"},
		ExposedPorts: []string{"9000/tcp"},
		WaitingFor:   wait.ForHTTP("/minio/health/ready").WithPort("9000/tcp").WithStartupTimeout(2 * time.Minute),
	})
	return S3Config{Endpoint: hostPort(t, c, "9000/tcp"), AccessKey: user, SecretKey: pass}
}

// Redis returns the host:port of a Redis server.
func Redis(t testing.TB) string {
	t.Helper()
	if v, ok := fromEnv(t, EnvRedisAddr); ok {
		return v[0]
	}
	requireDocker(t, EnvRedisAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := tcredis.Run(ctx, ImageRedis)
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("harness: start %s container: %v", ImageRedis, err)
	}
	return hostPort(t, c, "6379/tcp")
}

// StopService stops one of the services run by deploy/local/services.sh
// (ServiceNATS, ServiceClickHouse, ServiceMinIO or ServiceRedis) and registers a
// cleanup that starts it again, so an outage never outlives the test. The test is
// skipped (failed under CI) when the services were not started by services.sh.
func StopService(t testing.TB, name string) {
	t.Helper()
	script := servicesScript(t, name)
	if err := runServices(t, script, "stop", name); err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := runServices(t, script, "start", name); err != nil {
			t.Errorf("harness: restarting %s after the test: %v", name, err)
		}
	})
}

// StartService starts (or confirms running) one of the services run by
// deploy/local/services.sh, waiting until it is healthy.
func StartService(t testing.TB, name string) {
	t.Helper()
	script := servicesScript(t, name)
	if err := runServices(t, script, "start", name); err != nil {
		t.Fatalf("harness: %v", err)
	}
}

// RepoRoot returns the module root: the nearest directory at or above the
// working directory that holds a go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("harness: no go.mod found at or above the working directory")
		}
		dir = parent
	}
}

// ---------------------------------------------------------------------------

// fromEnv returns the values of the named variables when all are set. When some
// but not all are set the configuration is broken and the test fails.
func fromEnv(t testing.TB, names ...string) ([]string, bool) {
	t.Helper()
	vals := make([]string, len(names))
	var missing []string
	for i, n := range names {
		vals[i] = os.Getenv(n)
		if vals[i] == "" {
			missing = append(missing, n)
		}
	}
	switch len(missing) {
	case 0:
		return vals, true
	case len(names):
		return nil, false
	default:
		t.Fatalf("harness: %s set but %s missing; %s", strings.Join(setNames(names, missing), ", "),
			strings.Join(missing, ", "), setupHint)
		return nil, false
	}
}

func setNames(all, missing []string) []string {
	var out []string
	for _, n := range all {
		isMissing := false
		for _, m := range missing {
			isMissing = isMissing || m == n
		}
		if !isMissing {
			out = append(out, n)
		}
	}
	return out
}

var (
	dockerOnce sync.Once
	dockerErr  error
)

// dockerUnavailable reports why no Docker engine can be used (nil if one can).
// The check is done once per test binary.
func dockerUnavailable() error {
	dockerOnce.Do(func() {
		defer func() {
			if r := recover(); r != nil {
				dockerErr = fmt.Errorf("docker provider panicked: %v", r)
			}
		}()
		p, err := testcontainers.NewDockerProvider()
		if err != nil {
			dockerErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := p.Health(ctx); err != nil { // Health closes the provider
			dockerErr = err
		}
	})
	return dockerErr
}

// requireDocker returns if a Docker engine is reachable; otherwise it skips the
// test, or fails it when CI is set, naming the missing variables.
func requireDocker(t testing.TB, missing ...string) {
	t.Helper()
	err := dockerUnavailable()
	if err == nil {
		return
	}
	unavailable(t, "%s not set and no Docker engine is reachable (%v); %s",
		strings.Join(missing, ", "), err, setupHint)
}

// unavailable skips the test, or fails it when the CI variable is non-empty.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := "harness: " + fmt.Sprintf(format, args...)
	if os.Getenv(EnvCI) != "" {
		t.Fatalf("%s (CI=%s: failing instead of skipping)", msg, os.Getenv(EnvCI))
	}
	t.Skip(msg)
}

func startContainer(t testing.TB, req testcontainers.ContainerRequest) testcontainers.Container {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: req,
		Started:          true,
	})
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("harness: start %s container: %v", req.Image, err)
	}
	return c
}

func hostPort(t testing.TB, c testcontainers.Container, port string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host, err := c.Host(ctx)
	if err != nil {
		t.Fatalf("harness: container host: %v", err)
	}
	p, err := c.MappedPort(ctx, port)
	if err != nil {
		t.Fatalf("harness: container port %s: %v", port, err)
	}
	return net.JoinHostPort(host, p.Port())
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return hex.EncodeToString(b)
}

func servicesScript(t testing.TB, name string) string {
	t.Helper()
	switch name {
	case ServiceNATS, ServiceClickHouse, ServiceMinIO, ServiceRedis:
	default:
		t.Fatalf("harness: unknown service %q (want %s, %s, %s or %s)", name,
			ServiceNATS, ServiceClickHouse, ServiceMinIO, ServiceRedis)
	}
	if os.Getenv(EnvServicesManaged) != "1" {
		unavailable(t, "cannot stop/start %s: the services were not started by deploy/local/services.sh "+
			"(%s is not 1); %s", name, EnvServicesManaged, setupHint)
	}
	if s := os.Getenv(EnvServicesScript); s != "" {
		return s
	}
	return filepath.Join(RepoRoot(t), "deploy", "local", "services.sh")
}

func runServices(t testing.TB, script string, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("harness: services.sh %s (%s):\n%s", strings.Join(args, " "),
		time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(out)))
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("services.sh %s timed out", strings.Join(args, " "))
		}
		return fmt.Errorf("services.sh %s: %v", strings.Join(args, " "), err)
	}
	return nil
}

// FreshNATS returns the URL of a NATS server with an empty JetStream, for
// tests whose subject of study reads the fixed streams from the beginning
// (a demo, bench or fault run), where the shared server's history would leak
// in: its own nats-server process when the binary that
// deploy/local/services.sh installs is there, else a fresh container.
func FreshNATS(t testing.TB) string {
	t.Helper()
	if _, err := natsServerBinary(); err != nil {
		requireDocker(t, "nats-server binary")
		c := startContainer(t, testcontainers.ContainerRequest{
			Image: ImageNATS, Cmd: []string{"-js"}, ExposedPorts: []string{"4222/tcp"},
			WaitingFor: wait.ForLog("Server is ready").WithStartupTimeout(2 * time.Minute),
		})
		return "nats://" + hostPort(t, c, "4222/tcp")
	}
	return StartNATSServer(t).URL
}

// NATSServer is a nats-server process owned by one test, which it can stop
// and start again on the same port and store (a NATS restart).
type NATSServer struct {
	URL   string
	bin   string
	addr  string
	store string
	mu    sync.Mutex
	cmd   *exec.Cmd
	out   *Buffer
}

func natsServerBinary() (string, error) {
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOPATH: %w", err)
	}
	cand := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "nats-server")
	if _, err := os.Stat(cand); err != nil {
		return "", fmt.Errorf("nats-server not on PATH nor in $GOPATH/bin: %w", err)
	}
	return cand, nil
}

// StartNATSServer runs nats-server with JetStream on a free port and a
// temporary store; it fails (or skips outside CI) when the binary is missing.
func StartNATSServer(t testing.TB) *NATSServer {
	t.Helper()
	bin, err := natsServerBinary()
	if err != nil {
		unavailable(t, "%v; %s", err, setupHint)
	}
	addr, err := fleet.FreeListen()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	s := &NATSServer{URL: "nats://" + addr, bin: bin, addr: addr, store: t.TempDir()}
	s.Start(t)
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// Start starts the server (again) and waits until it accepts connections.
func (s *NATSServer) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	host, port, _ := net.SplitHostPort(s.addr)
	cmd := exec.Command(s.bin, "-js", "-a", host, "-p", port, "-sd", s.store)
	s.out = &Buffer{}
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("harness: start %s: %v", s.bin, err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness: nats-server on %s not up after 20s:\n%s", s.addr, s.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server gracefully (SIGINT: JetStream flushes its store).
func (s *NATSServer) Stop(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Buffer is a strings.Builder a child process's output goroutine and the
// test can share.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
