package settings

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/callpipe/callpipe/internal/defaults"
)

// ProbePolicy bounds where "Test connection" may connect. The test makes
// serve send requests to a URL that arrives over the API, so by default it
// reaches only public addresses: not loopback, link-local (the cloud
// metadata services live there), private, shared (CGNAT) or reserved ones.
// The address is checked when it is dialed, after DNS, so a name that
// resolves (or re-resolves) to a refused address is refused too.
type ProbePolicy struct {
	// AllowPrivate lets the test reach every address
	// (serve.test_connection.allow_private).
	AllowPrivate bool
	// Allow lists non-public networks the test may reach
	// (serve.test_connection.allow).
	Allow []netip.Prefix
	// Timeout bounds one whole test (default 5s).
	Timeout time.Duration
	// TLS is the client TLS of https:// hosts (langfuse.tls); nil: system
	// roots.
	TLS *tls.Config
}

// DefaultProbeTimeout bounds a connection test when the policy sets none.
const DefaultProbeTimeout = 5 * time.Second

// ParseNetwork reads a CIDR network or a single address (as a /32 or /128).
func ParseNetwork(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("%s: write IPv4 networks in IPv4 form", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParseNetworks reads every entry as ParseNetwork does.
func ParseNetworks(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		p, err := ParseNetwork(s)
		if err != nil {
			return nil, fmt.Errorf("network %q: %w", s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// nonPublic are the networks a connection test refuses besides what
// netip.Addr's own predicates name (loopback, link-local, private,
// multicast, unspecified).
var nonPublic = []struct {
	net    netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `a "this network" address`},
	{netip.MustParsePrefix("100.64.0.0/10"), "a shared (carrier-grade NAT) address, where some clouds serve instance metadata"},
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol address"},
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved address"},
	{netip.MustParsePrefix("64:ff9b::/96"), "a NAT64 address (it can stand for any IPv4 address)"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "a NAT64 address (it can stand for any IPv4 address)"},
	{netip.MustParsePrefix("2002::/16"), "a 6to4 address (it can stand for any IPv4 address)"},
}

// nonPublicReason says why a is not a public address, or "" when it is.
func nonPublicReason(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address, where clouds serve instance metadata"
	case a.IsPrivate():
		return "a private address"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	for _, n := range nonPublic {
		if n.net.Contains(a) {
			return n.reason
		}
	}
	return ""
}

// RefusedAddressError is a connection test refused by the policy.
type RefusedAddressError struct {
	Addr   netip.Addr
	Reason string
}

func (e *RefusedAddressError) Error() string {
	return fmt.Sprintf("%s is %s; Test connection reaches only public addresses unless serve.test_connection.allow lists the network (or serve.test_connection.allow_private is true)", e.Addr, e.Reason)
}

// check refuses a dialed address the policy does not allow.
func (p ProbePolicy) check(address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("connection test: unexpected address %q: %w", address, err)
	}
	a := ap.Addr().Unmap()
	if p.AllowPrivate {
		return nil
	}
	reason := nonPublicReason(a)
	if reason == "" {
		return nil
	}
	for _, n := range p.Allow {
		if n.Contains(a) {
			return nil
		}
	}
	return &RefusedAddressError{Addr: a, Reason: reason}
}

// Client is the HTTP client of connection tests: every dialed address is
// checked against the policy, no proxy is used (the check would see the
// proxy, not the target), redirects are not followed and the whole test is
// bounded by the timeout.
func (p ProbePolicy) Client() *http.Client {
	timeout := p.timeout()
	dialer := &net.Dialer{
		Timeout: timeout,
		Control: func(network, address string, _ syscall.RawConn) error {
			return p.check(address)
		},
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 64 << 10,
		DisableKeepAlives:      true,
		TLSClientConfig:        p.TLS,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// probeRefused is the result for a test the policy refused.
func probeRefused(err error) (ProbeResult, bool) {
	var re *RefusedAddressError
	if !errors.As(err, &re) {
		return ProbeResult{}, false
	}
	return ProbeResult{Stage: ProbeRefused, Message: re.Error()}, true
}

// timeout bounds one whole test: the policy's, or DefaultProbeTimeout.
func (p ProbePolicy) timeout() time.Duration {
	return defaults.IfNotPositive(p.Timeout, DefaultProbeTimeout)
}

// probeContext bounds a test by the policy's timeout.
func (p ProbePolicy) probeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, p.timeout())
}
