package settings

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Failure stages of a connection test: what an operator must fix.
const (
	ProbeOK          = "ok"
	ProbeInvalid     = "invalid"     // a field is malformed
	ProbeUnreachable = "unreachable" // DNS, refused, timeout
	ProbeTLS         = "tls"         // certificate or handshake
	ProbeNotLangfuse = "not_langfuse"
	ProbeAuth        = "auth"          // 401/403: keys refused
	ProbeProject     = "wrong_project" // keys of another project
	ProbeRefused     = "refused"       // the address is not one tests may reach (ProbePolicy)
)

// ProbeResult says exactly what a connection test found.
type ProbeResult struct {
	OK          bool   `json:"ok"`
	Stage       string `json:"stage"`
	Message     string `json:"message"`
	Version     string `json:"version,omitempty"`
	ProjectID   string `json:"project_id,omitempty"`
	ProjectName string `json:"project_name,omitempty"`
}

// Probe checks l the way the Langfuse sink will use it: the health endpoint
// (reachable, TLS, really Langfuse), then an authenticated request that also
// names the keys' project.
func Probe(ctx context.Context, client *http.Client, l Langfuse) ProbeResult {
	if err := l.Validate(); err != nil {
		return ProbeResult{Stage: ProbeInvalid, Message: err.Error()}
	}
	version, failed := Health(ctx, client, l.Host)
	if failed != nil {
		return *failed
	}
	return Keys(ctx, client, l, version)
}

// Health asks GET /api/public/health and returns Langfuse's version, or what
// failed (unreachable, TLS, not Langfuse).
func Health(ctx context.Context, client *http.Client, host string) (version string, failed *ProbeResult) {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	base := strings.TrimRight(host, "/")
	var health struct {
		Status  string `json:"status"`
		Version string `json:"version"`
	}
	code, body, err := get(ctx, client, base+"/api/public/health", "", "")
	if err != nil {
		r := transportFailure(host, err)
		return "", &r
	}
	if code != http.StatusOK || json.Unmarshal(body, &health) != nil || health.Version == "" {
		return "", &ProbeResult{Stage: ProbeNotLangfuse, Message: fmt.Sprintf("%s/api/public/health answered %d%s: not a healthy Langfuse server (or not its base URL)", base, code, redirectNote(code))}
	}
	return health.Version, nil
}

// Keys checks l's keys with GET /api/public/projects, which names the
// project they belong to, against l.ProjectID when set.
func Keys(ctx context.Context, client *http.Client, l Langfuse, version string) ProbeResult {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	res := ProbeResult{Version: version}
	code, body, err := get(ctx, client, strings.TrimRight(l.Host, "/")+"/api/public/projects", l.PublicKey, l.SecretKey)
	if err != nil {
		r := transportFailure(l.Host, err)
		r.Version = version
		return r
	}
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		res.Stage = ProbeAuth
		res.Message = fmt.Sprintf("Langfuse %s refused the keys (%d): check the public key %s and the secret key %s", version, code, l.PublicKey, SecretHint(l.SecretKey))
		return res
	case code != http.StatusOK:
		res.Stage = ProbeNotLangfuse
		res.Message = fmt.Sprintf("GET /api/public/projects answered %d%s", code, redirectNote(code))
		return res
	}
	var projects struct {
		Data []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &projects); err != nil || len(projects.Data) == 0 {
		res.Stage = ProbeProject
		res.Message = "the keys are accepted but belong to no project"
		return res
	}
	p := projects.Data[0]
	res.ProjectID, res.ProjectName = p.ID, p.Name
	if l.ProjectID != "" && l.ProjectID != p.ID {
		res.Stage = ProbeProject
		res.Message = fmt.Sprintf("the keys belong to project %q (%s), not to the expected project %s", p.Name, p.ID, l.ProjectID)
		return res
	}
	res.OK, res.Stage = true, ProbeOK
	res.Message = fmt.Sprintf("connected to Langfuse %s, project %q (%s)", version, p.Name, p.ID)
	return res
}

func get(ctx context.Context, client *http.Client, u, user, pass string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, b, nil
}

// transportFailure tells TLS problems from an unreachable host.
func transportFailure(host string, err error) ProbeResult {
	var (
		certErr      *tls.CertificateVerificationError
		unknownAuth  x509.UnknownAuthorityError
		hostnameErr  x509.HostnameError
		recordHeader tls.RecordHeaderError
		dnsErr       *net.DNSError
		urlErr       *url.Error
	)
	if r, ok := probeRefused(err); ok {
		return r
	}
	switch {
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostnameErr):
		return ProbeResult{Stage: ProbeTLS, Message: fmt.Sprintf("TLS: the certificate of %s is not trusted: %v", host, err)}
	case errors.As(err, &recordHeader):
		return ProbeResult{Stage: ProbeTLS, Message: fmt.Sprintf("TLS: %s does not speak TLS (use http:// instead of https://?): %v", host, err)}
	case errors.As(err, &dnsErr):
		return ProbeResult{Stage: ProbeUnreachable, Message: fmt.Sprintf("%s: host name not found: %v", host, dnsErr)}
	}
	msg := err.Error()
	if errors.As(err, &urlErr) {
		msg = urlErr.Err.Error()
	}
	if strings.Contains(msg, "HTTP response to HTTPS client") {
		return ProbeResult{Stage: ProbeTLS, Message: fmt.Sprintf("TLS: %s does not speak TLS (use http:// instead of https://?)", host)}
	}
	if strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:") {
		return ProbeResult{Stage: ProbeTLS, Message: fmt.Sprintf("TLS: %s: %s", host, msg)}
	}
	return ProbeResult{Stage: ProbeUnreachable, Message: fmt.Sprintf("%s is unreachable: %s", host, msg)}
}

// redirectNote explains a redirect, which tests do not follow: the base URL
// is where the sink sends traces, and a redirect could lead anywhere.
func redirectNote(code int) string {
	if code >= 300 && code < 400 {
		return " (a redirect, not followed: use the URL it points to as the host)"
	}
	return ""
}
