// Package nettest holds what tests need of the network: the local
// services' JetStream server, and a dialer whose connections hold back what
// the server sends while told to (a real server that answers late).
package nettest

import (
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// SlowDialer dials TCP; while Slow is set, what its connections read is
// handed on Delay late, so requests made then get their answers late (a
// loaded server, a slow link). It satisfies nats.CustomDialer.
type SlowDialer struct {
	Slow  *atomic.Bool
	Delay time.Duration
}

// Dial connects to address.
func (d SlowDialer) Dial(network, address string) (net.Conn, error) {
	c, err := net.Dial(network, address)
	if err != nil {
		return nil, err
	}
	return slowConn{Conn: c, d: d}, nil
}

type slowConn struct {
	net.Conn
	d SlowDialer
}

// Read holds back what it read: a read already waiting when Slow is set
// delays the answer too.
func (c slowConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.d.Slow.Load() {
		time.Sleep(c.d.Delay)
	}
	return n, err
}

// JetStream connects to the NATS JetStream server of the local services
// (deploy/local/services.sh; CALLPIPE_NATS_URL), closed when tb ends. It
// skips tb when CALLPIPE_NATS_URL is not set.
func JetStream(tb testing.TB) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	url := os.Getenv("CALLPIPE_NATS_URL")
	if url == "" {
		tb.Skip("CALLPIPE_NATS_URL is not set: start the local services (deploy/local/services.sh up) and source their env")
	}
	nc, err := nats.Connect(url)
	if err != nil {
		tb.Fatalf("nats: %v", err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js
}
