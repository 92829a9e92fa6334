package settings

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// fakeLangfuse answers health and, for its keys, GET /api/public/projects as
// Langfuse's OpenAPI defines it (Projects: {data: [Project]}).
func fakeLangfuse(pk, sk, projectID string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/public/health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"OK","version":"3.225.4"}`))
	})
	mux.HandleFunc("GET /api/public/projects", func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != pk || p != sk {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"message":"Invalid credentials"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"data":[{"id":"` + projectID + `","name":"xinference","organization":{"id":"o1","name":"ops"},"metadata":{}}]}`))
	})
	return mux
}

func TestProbeSaysWhatFailed(t *testing.T) {
	good := httptest.NewServer(fakeLangfuse("pk-lf-1", "sk-lf-1", "proj-1"))
	defer good.Close()
	tlsSrv := httptest.NewTLSServer(fakeLangfuse("pk-lf-1", "sk-lf-1", "proj-1"))
	defer tlsSrv.Close()
	notLF := httptest.NewServer(http.NotFoundHandler())
	defer notLF.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + ln.Addr().String()
	ln.Close()

	for _, tc := range []struct {
		name      string
		l         Langfuse
		stage     string
		mentioned string
	}{
		{"ok", Langfuse{Host: good.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}, ProbeOK, `project "xinference" (proj-1)`},
		{"expected project", Langfuse{Host: good.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1", ProjectID: "proj-1"}, ProbeOK, "proj-1"},
		{"bad secret", Langfuse{Host: good.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-wrong"}, ProbeAuth, "refused the keys (401)"},
		{"wrong project", Langfuse{Host: good.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1", ProjectID: "proj-2"}, ProbeProject, "not to the expected project proj-2"},
		{"unreachable", Langfuse{Host: closed, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}, ProbeUnreachable, "unreachable"},
		{"unknown host", Langfuse{Host: "http://langfuse.invalid", PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}, ProbeUnreachable, "host name not found"},
		{"untrusted certificate", Langfuse{Host: tlsSrv.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}, ProbeTLS, "not trusted"},
		{"https to a plain server", Langfuse{Host: strings.Replace(good.URL, "http://", "https://", 1), PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}, ProbeTLS, "does not speak TLS"},
		{"not langfuse", Langfuse{Host: notLF.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}, ProbeNotLangfuse, "not a healthy Langfuse server"},
		{"bad public key", Langfuse{Host: good.URL, PublicKey: "pk-1", SecretKey: "sk-lf-1"}, ProbeInvalid, "public_key"},
		{"no host", Langfuse{PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}, ProbeInvalid, "host: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Probe(context.Background(), nil, tc.l)
			if r.Stage != tc.stage || r.OK != (tc.stage == ProbeOK) || !strings.Contains(r.Message, tc.mentioned) {
				t.Fatalf("Probe = %+v; want stage %s mentioning %q", r, tc.stage, tc.mentioned)
			}
			if strings.Contains(r.Message, tc.l.SecretKey) && tc.l.SecretKey != "" {
				t.Fatalf("message shows the secret in clear: %s", r.Message)
			}
		})
	}
}

func TestSecretHint(t *testing.T) {
	for in, want := range map[string]string{"": "", "sk-lf-1": "…", "sk-lf-1234567890abcd": "sk-lf-…abcd"} {
		if got := SecretHint(in); got != want {
			t.Errorf("SecretHint(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestProbeTrustsTheConfiguredCA: with langfuse.tls's CA in the policy, Test
// connection reaches a Langfuse whose certificate that CA signed; without
// it the same server is "not trusted".
func TestProbeTrustsTheConfiguredCA(t *testing.T) {
	srv := httptest.NewTLSServer(fakeLangfuse("pk-lf-1", "sk-lf-1", "proj-1"))
	defer srv.Close()
	l := Langfuse{Host: srv.URL, PublicKey: "pk-lf-1", SecretKey: "sk-lf-1"}
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	with := ProbePolicy{AllowPrivate: true, TLS: &tls.Config{RootCAs: pool}}
	if r := Probe(context.Background(), with.Client(), l); r.Stage != ProbeOK {
		t.Errorf("with the CA: %+v", r)
	}
	without := ProbePolicy{AllowPrivate: true}
	if r := Probe(context.Background(), without.Client(), l); r.Stage != ProbeTLS {
		t.Errorf("without the CA: %+v, want %s", r, ProbeTLS)
	}
}
