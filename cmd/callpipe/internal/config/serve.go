package config

import "time"

// Serve configures `callpipe serve`: the usage API and the dashboard.
type Serve struct {
	Listen            string   `yaml:"listen" doc:"host:port of the usage API and dashboard"`
	Tokens            []string `yaml:"tokens" secret:"true" doc:"bearer tokens accepted on /api/ (comma separated in env); empty disables auth"`
	RefreshInterval   Duration `yaml:"refresh_interval" doc:"how often the dashboard polls the API for fresh numbers"`
	QueryTimeout      Duration `yaml:"query_timeout" doc:"longest ClickHouse query behind one API request (504 after it)"`
	LangfuseProjectID string   `yaml:"langfuse_project_id" doc:"Langfuse project id for \"View in Langfuse\" links (looked up with the langfuse keys when empty)"`
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
	return []error{
		checkKey(validHostPort(s.Listen), "serve.listen", s.Listen, "must be host:port"),
		checkKey(!emptyToken, "serve.tokens", "(masked)", "tokens must not be empty strings"),
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
