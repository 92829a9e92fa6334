package config

import (
	"strings"
	"time"

	"github.com/callpipe/callpipe/store/settings"
)

// Serve configures `callpipe serve`: the usage API and the dashboard.
type Serve struct {
	Listen     string   `yaml:"listen" doc:"host:port of the usage API and dashboard"`
	Tokens     []string `yaml:"tokens" secret:"true" doc:"admin bearer tokens: read /api/ and write settings and exports (comma separated in env); with no tokens at all /api/ is open to read and closed to writes"`
	ReadTokens []string `yaml:"read_tokens" secret:"true" doc:"read-only bearer tokens: usage, calls, settings and exports can be read, not changed (comma separated in env)"`
	// AllowUnauthenticatedWrites opens settings and export writes to anyone
	// who reaches serve, for a trusted network without tokens.
	AllowUnauthenticatedWrites bool           `yaml:"allow_unauthenticated_writes" doc:"with no tokens, let anyone who reaches serve change the Langfuse settings and start exports (only on a trusted network)"`
	TestConnection             TestConnection `yaml:"test_connection"`
	RefreshInterval            Duration       `yaml:"refresh_interval" doc:"how often the dashboard polls the API for fresh numbers"`
	QueryTimeout               Duration       `yaml:"query_timeout" doc:"longest ClickHouse query behind one API request (504 after it)"`
	LangfuseProjectID          string         `yaml:"langfuse_project_id" doc:"Langfuse project id for \"View in Langfuse\" links (looked up with the langfuse keys when empty)"`
}

// TestConnection bounds where the settings page's "Test connection" may
// connect: it makes serve send requests to a URL from the API.
type TestConnection struct {
	AllowPrivate bool     `yaml:"allow_private" doc:"let Test connection reach loopback, link-local (cloud metadata), private and other non-public addresses"`
	Allow        []string `yaml:"allow" doc:"networks (CIDR, e.g. 10.20.0.0/16, or single addresses) Test connection may reach although they are not public (comma separated in env)"`
}

// Policy is the settings.ProbePolicy of these keys (validated before).
func (t TestConnection) Policy() settings.ProbePolicy {
	allow, _ := settings.ParseNetworks(t.Allow)
	return settings.ProbePolicy{AllowPrivate: t.AllowPrivate, Allow: allow}
}

func defaultServe() Serve {
	return Serve{Listen: "127.0.0.1:8090", RefreshInterval: Duration(15 * time.Second), QueryTimeout: Duration(30 * time.Second)}
}

func (c *Config) validateServe() []error {
	s := c.Serve
	emptyToken := false
	for _, t := range s.Tokens {
		emptyToken = emptyToken || t == ""
	}
	for _, t := range s.ReadTokens {
		emptyToken = emptyToken || t == ""
	}
	var badNet []string
	for _, a := range s.TestConnection.Allow {
		if _, err := settings.ParseNetwork(a); err != nil {
			badNet = append(badNet, a)
		}
	}
	return []error{
		checkKey(validHostPort(s.Listen), "serve.listen", s.Listen, "must be host:port"),
		checkKey(!emptyToken, "serve.tokens", "(masked)", "tokens must not be empty strings (serve.tokens, serve.read_tokens)"),
		checkKey(!s.AllowUnauthenticatedWrites || len(s.Tokens)+len(s.ReadTokens) == 0, "serve.allow_unauthenticated_writes", true,
			"applies only when serve has no tokens; with serve.tokens or serve.read_tokens set, writes need an admin token (remove one of the two)"),
		checkKey(len(badNet) == 0, "serve.test_connection.allow", strings.Join(badNet, ","), "must be networks in CIDR form (10.0.0.0/8, fd00::/8) or addresses"),
		checkKey(s.RefreshInterval >= Duration(time.Second), "serve.refresh_interval", s.RefreshInterval, "must be at least 1s"),
		checkKey(s.QueryTimeout >= Duration(time.Second), "serve.query_timeout", s.QueryTimeout, "must be at least 1s"),
		checkKey(validProjectID(s.LangfuseProjectID), "serve.langfuse_project_id", s.LangfuseProjectID, "must be letters, digits, - and _"),
	}
}

// validProjectID accepts what goes into a Langfuse URL path segment unescaped.
func validProjectID(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return len(s) <= 128
}
