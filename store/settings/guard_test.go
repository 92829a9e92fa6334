package settings

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

func TestNonPublicAddresses(t *testing.T) {
	for _, s := range []string{"127.0.0.1", "127.1.2.3", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "::",
		"10.0.0.1", "172.16.5.4", "192.168.1.1", "fd00:ec2::254", "100.100.100.200", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
		"224.0.0.1", "255.255.255.255", "64:ff9b::a9fe:a9fe", "240.0.0.1"} {
		if nonPublicReason(netip.MustParseAddr(s)) == "" {
			t.Errorf("%s counted as public", s)
		}
	}
	for _, s := range []string{"8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "172.32.0.1", "100.128.0.1"} {
		if r := nonPublicReason(netip.MustParseAddr(s)); r != "" {
			t.Errorf("%s refused: %s", s, r)
		}
	}
}

// TestProbeRefusesNonPublic: the metadata address, loopback (by address and
// by a name that resolves to it) are refused at dial time with a message
// naming the setting; allowing the network or private addresses lets the
// test through.
func TestProbeRefusesNonPublic(t *testing.T) {
	lf := httptest.NewServer(fakeLangfuse("pk-lf-1", "sk-lf-1", "proj-1"))
	defer lf.Close()
	port := lf.URL[strings.LastIndex(lf.URL, ":"):]
	ctx := context.Background()
	for _, host := range []string{"http://169.254.169.254", "http://[fe80::1]:80", lf.URL, "http://localhost" + port, "http://[::ffff:127.0.0.1]" + port} {
		r := Probe(ctx, ProbePolicy{}.Client(), Langfuse{Host: host, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"})
		if r.OK || r.Stage != ProbeRefused || !strings.Contains(r.Message, "serve.test_connection.allow") {
			t.Errorf("%s: %+v", host, r)
		}
	}
	loop := netip.MustParsePrefix("127.0.0.0/8")
	for _, p := range []ProbePolicy{{AllowPrivate: true}, {Allow: []netip.Prefix{loop}}} {
		if r := Probe(ctx, p.Client(), Langfuse{Host: lf.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}); !r.OK {
			t.Errorf("%+v: %+v", p, r)
		}
	}
	other := ProbePolicy{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	if r := Probe(ctx, other.Client(), Langfuse{Host: lf.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}); r.Stage != ProbeRefused {
		t.Errorf("allow 10.0.0.0/8 let 127.0.0.1 through: %+v", r)
	}
}

// TestProbeNoRedirectNoEcho: a redirect is not followed, and what the
// tested server answers never comes back beyond its status.
func TestProbeNoRedirectNoEcho(t *testing.T) {
	lf := httptest.NewServer(fakeLangfuse("pk-lf-1", "sk-lf-1", "proj-1"))
	defer lf.Close()
	redirect := httptest.NewServer(http.RedirectHandler(lf.URL+"/api/public/health", http.StatusFound))
	defer redirect.Close()
	leaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte("ami-id instance-secret-token"))
	}))
	defer leaky.Close()
	client := ProbePolicy{AllowPrivate: true}.Client()
	r := Probe(context.Background(), client, Langfuse{Host: redirect.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"})
	if r.OK || r.Stage != ProbeNotLangfuse || !strings.Contains(r.Message, "302") || !strings.Contains(r.Message, "not followed") {
		t.Errorf("redirect: %+v", r)
	}
	r = Probe(context.Background(), client, Langfuse{Host: leaky.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"})
	if r.OK || strings.Contains(r.Message, "secret") || !strings.Contains(r.Message, "500") {
		t.Errorf("body echoed or status missing: %+v", r)
	}
}

// TestSettingsWritesTakeOnlyJSON: a cross-site HTML form (urlencoded,
// multipart or text/plain) cannot save settings or start a test.
func TestSettingsWritesTakeOnlyJSON(t *testing.T) {
	mux := http.NewServeMux()
	(&Handler{}).Register(mux)
	body := `{"host":"http://169.254.169.254","public_key":"pk-lf-1","secret_key":"sk-lf-1"}`
	for _, path := range []string{"/api/v1/settings/langfuse/test", "/api/v1/settings/langfuse"} {
		method := http.MethodPost
		if !strings.HasSuffix(path, "/test") {
			method = http.MethodPut
		}
		for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", ""} {
			req := httptest.NewRequest(method, path, strings.NewReader(body))
			if ct != "" {
				req.Header.Set("Content-Type", ct)
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			if rec.Code != http.StatusUnsupportedMediaType {
				t.Errorf("%s %s as %q: %d %s", method, path, ct, rec.Code, rec.Body)
			}
		}
	}
}

func TestParseNetwork(t *testing.T) {
	for in, want := range map[string]string{"10.1.2.3/8": "10.0.0.0/8", "192.168.1.5": "192.168.1.5/32", "fd00::/8": "fd00::/8", "::1": "::1/128", "::ffff:10.0.0.1": "10.0.0.1/32"} {
		if p, err := ParseNetwork(in); err != nil || p.String() != want {
			t.Errorf("%s: %v %v", in, p, err)
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "example.com", "::ffff:10.0.0.0/104"} {
		if _, err := ParseNetwork(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
