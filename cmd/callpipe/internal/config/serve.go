package config

// Serve configures `callpipe serve`: the usage API and the dashboard.
type Serve struct {
	Listen string `yaml:"listen" doc:"host:port of the usage API and dashboard"`
}

func defaultServe() Serve { return Serve{Listen: "127.0.0.1:8090"} }

func (c *Config) validateServe() []error {
	s := c.Serve
	return []error{
		checkKey(validHostPort(s.Listen), "serve.listen", s.Listen, "must be host:port"),
	}
}
