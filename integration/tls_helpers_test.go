package integration

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// testPKI is a CA and a server certificate (127.0.0.1, localhost) it signed,
// as PEM files, for servers that accept TLS only.
type testPKI struct {
	dir                       string
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "callpipe test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{dir: dir, caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "server.pem"), keyFile: filepath.Join(dir, "server.key"),
		pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	writePEM(t, p.caFile, "CERTIFICATE", caDER)
	writePEM(t, p.certFile, "CERTIFICATE", der)
	writePEM(t, p.keyFile, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (p *testPKI) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12}
}

// serverBin finds a server binary that deploy/local/services.sh installed
// (PATH, sbin or GOPATH/bin); the test is skipped without it.
func serverBin(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dirs := []string{"/usr/sbin", "/usr/local/sbin"}
	if gp := os.Getenv("GOPATH"); gp != "" {
		dirs = append(dirs, filepath.Join(strings.Split(gp, ":")[0], "bin"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, name)); err == nil {
			return filepath.Join(d, name)
		}
	}
	t.Skipf("%s is not installed (deploy/local/services.sh install)", name)
	return ""
}

// startDaemon runs a server process of the test (its log in the test's
// temporary folder) and stops it when the test ends.
func startDaemon(t *testing.T, name string, env []string, bin string, args ...string) *os.File {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log (end):\n%s", name, testkit.Last(string(b), 2000))
		}
		logf.Close()
	})
	return logf
}

func waitReady(t *testing.T, what string, ready func() error) {
	t.Helper()
	var last error
	testkit.WaitFor(t, 60*time.Second, what, func() (bool, string) {
		last = ready()
		return last == nil, fmt.Sprint(last)
	})
}

// tlsNATS is a nats-server that accepts only TLS clients authenticated by
// an NKey, with JetStream (its store encrypted when cipher is set).
type tlsNATS struct {
	url, seedFile, storeDir string
}

func startTLSNATS(t *testing.T, pki *testPKI, cipher string) *tlsNATS {
	t.Helper()
	bin := serverBin(t, "nats-server")
	dir := t.TempDir()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	n := &tlsNATS{seedFile: filepath.Join(dir, "user.nk"), storeDir: filepath.Join(dir, "jetstream")}
	if err := os.WriteFile(n.seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testkit.FreeAddr(t)
	enc := ""
	if cipher != "" {
		enc = ", cipher: " + cipher + ", key: $TEST_JS_KEY"
	}
	conf := fmt.Sprintf("listen: %s\ntls { cert_file: %q, key_file: %q, timeout: 5 }\nauthorization { users: [ { nkey: %s } ] }\njetstream { store_dir: %q%s }\n",
		addr, pki.certFile, pki.keyFile, pub, n.storeDir, enc)
	confFile := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, "nats-tls", []string{"TEST_JS_KEY=" + testkit.RandomHex(t, 32)}, bin, "-c", confFile)
	n.url = "tls://" + addr
	waitReady(t, "TLS NATS", func() error {
		nc, err := n.connect(pki)
		if err == nil {
			nc.Close()
		}
		return err
	})
	return n
}

func (n *tlsNATS) connect(pki *testPKI) (*nats.Conn, error) {
	nk, err := nats.NkeyOptionFromSeed(n.seedFile)
	if err != nil {
		return nil, err
	}
	return nats.Connect(n.url, nats.Secure(pki.clientTLS()), nk, nats.Timeout(2*time.Second))
}

// startTLSClickHouse runs clickhouse-server with only its secure native port
// (tcp_port_secure) open and returns that address.
func startTLSClickHouse(t *testing.T, pki *testPKI) string {
	t.Helper()
	bin := serverBin(t, "clickhouse-server")
	d := t.TempDir()
	for _, sub := range []string{"data", "tmp", "log", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	addr := testkit.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	config := fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
    <logger><level>information</level><log>%[1]s/log/server.log</log><errorlog>%[1]s/log/server.err.log</errorlog><size>10M</size><count>1</count></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port_secure>%[2]s</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>%[3]s</certificateFile>
            <privateKeyFile>%[4]s</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
    <max_connections>64</max_connections>
    <mark_cache_size>67108864</mark_cache_size>
    <path>%[1]s/data/</path>
    <tmp_path>%[1]s/tmp/</tmp_path>
    <user_files_path>%[1]s/user_files/</user_files_path>
    <format_schema_path>%[1]s/format_schemas/</format_schema_path>
    <users_config>%[1]s/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
</yandex>
`, d, port, pki.certFile, pki.keyFile)
	users := `<?xml version="1.0"?>
<yandex>
    <profiles><default><allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type></default></profiles>
    <users><default><password></password><networks replace="replace"><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`
	if err := os.WriteFile(filepath.Join(d, "config.xml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "users.xml"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, "clickhouse-tls", nil, bin, "--config-file="+filepath.Join(d, "config.xml"))
	waitReady(t, "TLS ClickHouse", func() error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, pki.clientTLS())
		if err == nil {
			c.Close()
		}
		return err
	})
	return addr
}

// tlsMinIO is a MinIO that serves https only, with a KMS key (SSE-S3).
type tlsMinIO struct {
	endpoint, user, password string
}

func startTLSMinIO(t *testing.T, pki *testPKI) *tlsMinIO {
	t.Helper()
	bin := serverBin(t, "minio")
	d := t.TempDir()
	certs := filepath.Join(d, "certs")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{pki.certFile: "public.crt", pki.keyFile: "private.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(certs, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	kms := make([]byte, 32)
	_, _ = rand.Read(kms)
	m := &tlsMinIO{endpoint: testkit.FreeAddr(t), user: "tlsroot" + testkit.RandomHex(t, 4), password: testkit.RandomHex(t, 16)}
	startDaemon(t, "minio-tls", []string{"MINIO_ROOT_USER=" + m.user, "MINIO_ROOT_PASSWORD=" + m.password,
		"MINIO_KMS_SECRET_KEY=callpipe-test:" + base64.StdEncoding.EncodeToString(kms), "MINIO_BROWSER=off", "MINIO_UPDATE=off"},
		bin, "server", filepath.Join(d, "data"), "--address", m.endpoint, "--console-address", testkit.FreeAddr(t), "--certs-dir", certs, "--quiet")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.clientTLS()}, Timeout: 2 * time.Second}
	waitReady(t, "TLS MinIO", func() error {
		resp, err := client.Get("https://" + m.endpoint + "/minio/health/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	})
	return m
}

// tlsRedis is a redis-server with only a TLS port and one ACL user,
// "callpipe", with the rules of the compose stack (composeRedisACL); the
// default user is off.
type tlsRedis struct {
	addr, user, password string
}

func startTLSRedis(t *testing.T, pki *testPKI) *tlsRedis {
	t.Helper()
	bin := serverBin(t, "redis-server")
	r := &tlsRedis{addr: testkit.FreeAddr(t), user: "callpipe", password: testkit.RandomHex(t, 16)}
	_, port, _ := net.SplitHostPort(r.addr)
	args := []string{"--port", "0", "--tls-port", port, "--bind", "127.0.0.1",
		"--tls-cert-file", pki.certFile, "--tls-key-file", pki.keyFile, "--tls-ca-cert-file", pki.caFile, "--tls-auth-clients", "no",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir(),
		"--user", "default", "off",
		"--user", "callpipe", "on", ">" + r.password}
	startDaemon(t, "redis-tls", nil, bin, append(args, composeRedisACL(t)...)...)
	waitReady(t, "TLS Redis", func() error {
		c := redis.NewClient(&redis.Options{Addr: r.addr, Username: r.user, Password: r.password, TLSConfig: pki.clientTLS(),
			MaxRetries: -1, DisableIdentity: true})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return c.Ping(ctx).Err()
	})
	return r
}

// composeRedisACL is the ACL rules of user callpipe in the compose stack's
// Redis command (deploy/compose/docker-compose.yml), so that the tests run
// callpipe under exactly the rights the stack gives it.
func composeRedisACL(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "deploy", "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`--user callpipe on >\$\{CALLPIPE_REDIS_PASSWORD:\?[^}]*\} ([^\n]+)`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("the compose file's redis command declares no ACL user callpipe")
	}
	return strings.Fields(string(m[1]))
}
