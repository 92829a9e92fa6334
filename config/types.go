package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration that also accepts a day suffix ("7d"), because
// retention settings are naturally written in days.
type Duration time.Duration

func (d Duration) String() string {
	td := time.Duration(d)
	if td != 0 && td%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(td/(24*time.Hour)), 10) + "d"
	}
	return td.String()
}

// Set parses s; it implements the flag.Value contract used by env and flags too.
func (d *Duration) Set(s string) error {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, "d") {
		n, err := strconv.ParseFloat(strings.TrimSuffix(s, "d"), 64)
		if err != nil {
			return fmt.Errorf("not a duration (use e.g. 90s, 10m, 7d)")
		}
		*d = Duration(n * float64(24*time.Hour))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration (use e.g. 90s, 10m, 7d)")
	}
	*d = Duration(v)
	return nil
}

// ByteSize is a size in bytes that accepts unit suffixes (KB, MB, GB, KiB, MiB, GiB).
type ByteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"TB", 1000 * 1000 * 1000 * 1000},
	{"B", 1},
}

func (b ByteSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.mult == 0 {
			return strconv.FormatInt(int64(b)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

func (b *ByteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(s, u.suffix) {
			mult, s = u.mult, strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("not a byte size (use e.g. 1048576, 512KiB, 8MiB, 10GB)")
	}
	*b = ByteSize(n * mult)
	return nil
}

// TLS is the client TLS setting shared by every connection.
type TLS struct {
	Enabled            bool   `yaml:"enabled" doc:"use TLS for this connection"`
	CAFile             string `yaml:"ca_file" doc:"PEM file of CAs that sign the server certificate (system roots when empty)"`
	CertFile           string `yaml:"cert_file" doc:"client certificate (PEM) for mutual TLS"`
	KeyFile            string `yaml:"key_file" doc:"client key (PEM) for mutual TLS"`
	ServerName         string `yaml:"server_name" doc:"name to verify in the server certificate (host of the address when empty)"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify" doc:"do not verify the server certificate (testing only)"`
}

// Build returns the *tls.Config, or nil when TLS is off.
func (t TLS) Build() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func validHostPort(v string) bool {
	_, port, err := net.SplitHostPort(v)
	return err == nil && port != ""
}

func replaceDash(s string) string { return strings.ReplaceAll(s, "-", "_") }
