package doctor

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/store/callsdb"
)

func TestPrintAndBroken(t *testing.T) {
	rs := []Result{
		ok("nats", "connected"),
		fail("clickhouse", "run `callpipe migrate`", "schema\nmissing"),
		warn("consumer x", "start a worker", "missing"),
		skip("langfuse", "not configured"),
	}
	var b strings.Builder
	if err := Print(&b, rs); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	want := []string{
		"ok    nats        connected",
		"FAIL  clickhouse  schema missing → fix: run `callpipe migrate`",
		"warn  consumer x  missing → fix: start a worker",
		"skip  langfuse    not configured",
		"doctor: 1 broken, 1 warning(s)",
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines:\n%s", len(lines), b.String())
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d:\n got %q\nwant %q", i, lines[i], want[i])
		}
	}
	if n := Broken(rs); n != 1 {
		t.Errorf("Broken = %d, want 1", n)
	}
	b.Reset()
	_ = Print(&b, rs[:1])
	if !strings.HasSuffix(b.String(), "doctor: all good\n") {
		t.Errorf("all ok summary: %q", b.String())
	}
	b.Reset()
	_ = Print(&b, rs[2:])
	if !strings.HasSuffix(b.String(), "doctor: everything reachable, 1 warning(s)\n") || Broken(rs[2:]) != 0 {
		t.Errorf("warning-only summary: %q", b.String())
	}
}

func TestRunKeepsOrderAndBoundsEachCheck(t *testing.T) {
	slow := func(ctx context.Context) []Result {
		<-ctx.Done() // a dependency that never answers
		return []Result{fail("slow", "", "%v", ctx.Err())}
	}
	fast := func(context.Context) []Result { return []Result{ok("fast", "x"), ok("fast 2", "y")} }
	start := time.Now()
	rs := Run(context.Background(), 100*time.Millisecond, slow, fast)
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Run took %v with a 100ms timeout", el)
	}
	if len(rs) != 3 || rs[0].Name != "slow" || rs[1].Name != "fast" || rs[2].Name != "fast 2" {
		t.Fatalf("results out of order: %+v", rs)
	}
	if rs[0].Status != Fail || !strings.Contains(rs[0].Detail, "deadline exceeded") {
		t.Errorf("slow check: %+v", rs[0])
	}
}

func TestCompareSchema(t *testing.T) {
	migs, err := callsdb.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(migs) < 2 {
		t.Fatalf("want at least 2 shipped migrations, have %d", len(migs))
	}
	all := map[int]string{}
	for _, m := range migs {
		all[m.Version] = m.Checksum
	}
	last := migs[len(migs)-1]

	r := compareSchema("callpipe", migs, all)
	if r.Status != OK || !strings.Contains(r.Detail, "all ") {
		t.Errorf("complete schema: %+v", r)
	}

	partial := map[int]string{}
	for v, s := range all {
		if v != last.Version {
			partial[v] = s
		}
	}
	r = compareSchema("callpipe", migs, partial)
	if r.Status != Fail || !strings.Contains(r.Detail, last.Name) || !strings.Contains(r.Fix, "callpipe migrate") {
		t.Errorf("missing migration: %+v", r)
	}

	changed := map[int]string{}
	for v, s := range all {
		changed[v] = s
	}
	changed[migs[0].Version] = "0000"
	r = compareSchema("callpipe", migs, changed)
	if r.Status != Fail || !strings.Contains(r.Detail, migs[0].Name) || !strings.Contains(r.Fix, "append-only") {
		t.Errorf("changed migration: %+v", r)
	}

	newer := map[int]string{9999: "abc"}
	for v, s := range all {
		newer[v] = s
	}
	r = compareSchema("callpipe", migs, newer)
	if r.Status != Warn || !strings.Contains(r.Detail, "9999") {
		t.Errorf("newer database: %+v", r)
	}
}

func TestConsumerState(t *testing.T) {
	c := Consumer{Stream: "CALLPIPE_CALLS", Name: "callpipe-normalize", Stage: "normalize"}
	idle := &jetstream.ConsumerInfo{NumPending: 500}
	if r := consumerState("consumer x", c, idle); r.Status != Warn || !strings.Contains(r.Fix, "--stages normalize") {
		t.Errorf("backlog without pullers: %+v", r)
	}
	pulled := &jetstream.ConsumerInfo{NumPending: 500, NumWaiting: 1}
	if r := consumerState("consumer x", c, pulled); r.Status != OK || !strings.Contains(r.Detail, "500 pending") {
		t.Errorf("backlog with a puller: %+v", r)
	}
	if r := consumerState("consumer x", c, &jetstream.ConsumerInfo{}); r.Status != OK {
		t.Errorf("empty consumer: %+v", r)
	}
}

func TestNATSConnectFailureNamesNATS(t *testing.T) {
	check := NATS(func(context.Context) (*nats.Conn, error) { return nil, nats.ErrNoServers },
		NATSExpect{URL: "nats://nats.invalid:4222", Streams: []string{"CALLPIPE_CALLS"}})
	rs := check(context.Background())
	if len(rs) != 1 || rs[0].Name != "nats" || rs[0].Status != Fail ||
		!strings.Contains(rs[0].Detail, "nats.invalid") || !strings.Contains(rs[0].Fix, "nats.url") {
		t.Fatalf("got %+v", rs)
	}
}

func TestRedisUnreachable(t *testing.T) {
	ln := httptest.NewServer(http.NotFoundHandler()) // take a port, then free it
	addr := ln.Listener.Addr().String()
	ln.Close()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	rs := Redis(addr, rdb)(context.Background())
	if len(rs) != 1 || rs[0].Name != "redis" || rs[0].Status != Fail || !strings.Contains(rs[0].Fix, "redis.addr") {
		t.Fatalf("got %+v", rs)
	}
}

// fakeLangfuse serves health and the project of one key pair.
func fakeLangfuse(t *testing.T, healthCode int) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/public/health", func(w http.ResponseWriter, r *http.Request) {
		if _, _, ok := r.BasicAuth(); ok {
			t.Error("health was sent credentials")
		}
		w.WriteHeader(healthCode)
		_, _ = w.Write([]byte(`{"status":"OK","version":"3.225.4"}`))
	})
	mux.HandleFunc("GET /api/public/projects", func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != "pk-lf-good" || p != "sk-lf-good" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"message":"Invalid credentials"}`))
			return
		}
		_, _ = w.Write([]byte(`{"data":[{"id":"20250101","name":"xinference"}]}`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestLangfuse(t *testing.T) {
	up := fakeLangfuse(t, http.StatusOK)
	down := fakeLangfuse(t, http.StatusServiceUnavailable)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	cases := []struct {
		name, host, pk, sk string
		want               []Status
		failing, mention   string
	}{
		{"healthy, keys accepted", up.URL, "pk-lf-good", "sk-lf-good", []Status{OK, OK}, "", "xinference (20250101)"},
		{"keys rejected", up.URL, "pk-lf-good", "sk-lf-bad", []Status{OK, Fail}, "langfuse keys", "401"},
		{"keys missing", up.URL, "", "", []Status{OK, Fail}, "langfuse keys", "key is missing"},
		{"unhealthy", down.URL, "pk-lf-good", "sk-lf-good", []Status{Fail}, "langfuse", "503"},
		{"unreachable", gone.URL, "pk-lf-good", "sk-lf-good", []Status{Fail}, "langfuse", "connection refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			rs := Langfuse(c.host, c.pk, c.sk, &http.Client{})(ctx)
			if len(rs) != len(c.want) {
				t.Fatalf("got %+v", rs)
			}
			all := ""
			for i, r := range rs {
				if r.Status != c.want[i] {
					t.Errorf("line %d: %+v, want status %v", i, r, c.want[i])
				}
				if r.Status == Fail && (r.Name != c.failing || r.Fix == "") {
					t.Errorf("failing line %+v, want name %q and a fix", r, c.failing)
				}
				all += r.Detail + "\n"
			}
			if !strings.Contains(all, c.mention) {
				t.Errorf("details %q do not mention %q", all, c.mention)
			}
		})
	}
}

// fakeS3 answers the requests of the S3 check with the given status codes.
func fakeS3(t *testing.T, head, put, del int) (*minio.Client, string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodHead && r.URL.Path == "/callpipe/":
			w.WriteHeader(head)
		case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/callpipe/"+ProbePrefix):
			if put == http.StatusOK {
				w.Header().Set("ETag", `"d41d8cd98f00b204e9800998ecf8427e"`)
			}
			w.WriteHeader(put)
			if put != http.StatusOK {
				_, _ = w.Write([]byte(`<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>`))
			}
		case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/callpipe/"+ProbePrefix):
			w.WriteHeader(del)
			if del != http.StatusNoContent {
				_, _ = w.Write([]byte(`<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>`))
			}
		default:
			t.Errorf("unexpected S3 request %s %s", r.Method, r.URL)
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	t.Cleanup(srv.Close)
	endpoint := strings.TrimPrefix(srv.URL, "http://")
	c, err := minio.New(endpoint, &minio.Options{
		Creds: credentials.NewStaticV4("ak", "sk", ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath, MaxRetries: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, endpoint
}

func TestS3(t *testing.T) {
	cases := []struct {
		name           string
		head, put, del int
		status         Status
		mention        string
	}{
		{"writable", 200, 200, 204, OK, "write and delete allowed"},
		{"no bucket", 404, 0, 0, Fail, "does not exist"},
		{"denied", 403, 0, 0, Fail, "s3.access_key"},
		{"read only", 200, 403, 0, Fail, "s3:PutObject"},
		{"no delete", 200, 200, 403, Fail, "s3:DeleteObject"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			client, endpoint := fakeS3(t, c.head, c.put, c.del)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rs := S3(endpoint, "callpipe", client)(ctx)
			if len(rs) != 1 || rs[0].Name != "s3" || rs[0].Status != c.status {
				t.Fatalf("got %+v", rs)
			}
			if !strings.Contains(rs[0].Detail+" "+rs[0].Fix, c.mention) {
				t.Errorf("%+v does not mention %q", rs[0], c.mention)
			}
		})
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{OK: "ok", Skip: "skip", Warn: "warn", Fail: "FAIL"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", s, s.String(), want)
		}
	}
}

func TestEncryptedMarksTheDependencyLine(t *testing.T) {
	c := func(context.Context) []Result { return []Result{ok("redis", "PING answered"), ok("redis more", "x")} }
	plain := Encrypted(c, false)(context.Background())
	if plain[0].Detail != "PING answered [plain text]" || plain[1].Detail != "x" {
		t.Errorf("plain: %+v", plain)
	}
	if rs := Encrypted(c, true)(context.Background()); rs[0].Detail != "PING answered [TLS]" {
		t.Errorf("tls: %+v", rs)
	}
	if rs := Encrypted(Skipped("s3", "s3.endpoint is empty"), false)(context.Background()); strings.Contains(rs[0].Detail, "plain") {
		t.Errorf("a skipped dependency has no connection: %+v", rs)
	}
}
