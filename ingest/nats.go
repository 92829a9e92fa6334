// Package ingest brings call events into callpipe: the JetStream connection
// and stream layout, and the Publisher that the collector, the proxy and other
// Go producers use to store events.
package ingest

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callpipe/callpipe/internal/defaults"
)

// NATSOptions are the connection settings users deploy NATS with.
type NATSOptions struct {
	URL       string // comma separated
	Name      string // client name shown in NATS monitoring
	User      string
	Password  string
	Token     string
	NKeyFile  string // NKey seed file
	CredsFile string // JWT .creds file
	TLS       *tls.Config
	Logger    *slog.Logger
	// ConnectWait is how long Connect waits for the first connection before
	// returning a connection that keeps trying in the background (default 10s).
	ConnectWait time.Duration
}

// AuthOptions are the credential and TLS options of o (user, token, NKey
// seed, creds file, TLS). Only reading the NKey seed file can fail; the error
// is that of nats.NkeyOptionFromSeed.
func AuthOptions(o NATSOptions) ([]nats.Option, error) {
	var opts []nats.Option
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.NKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeyFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, opt)
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.TLS != nil {
		opts = append(opts, nats.Secure(o.TLS))
	}
	return opts, nil
}

// Connect dials NATS and keeps reconnecting for ever: a component that starts
// before NATS, or outlives a NATS restart, recovers without a restart of its own.
func Connect(o NATSOptions) (*nats.Conn, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(-1), // fail publishes fast while disconnected instead of buffering them
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close or Drain
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.Warn("nats async error", "err", err) }),
	}
	auth, err := AuthOptions(o)
	if err != nil {
		return nil, fmt.Errorf("nats nkey file %s: %w", o.NKeyFile, err)
	}
	opts = append(opts, auth...)
	connected := make(chan struct{})
	var once sync.Once
	opts = append(opts, nats.ConnectHandler(func(*nats.Conn) { once.Do(func() { close(connected) }) }))
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect %s: %w", o.URL, err)
	}
	if nc.IsConnected() {
		return nc, nil
	}
	wait := defaults.IfNotPositive(o.ConnectWait, 10*time.Second)
	select {
	case <-connected:
	case <-time.After(wait):
		log.Warn("nats not reachable yet; retrying in the background", "url", o.URL, "waited", wait)
	}
	return nc, nil
}
