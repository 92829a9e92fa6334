// Package nettest holds network doubles for tests that need a real server
// to answer late: a dialer whose connections hold back what the server
// sends while told to.
package nettest

import (
	"net"
	"sync/atomic"
	"time"
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
