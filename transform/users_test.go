package transform

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/schema"
)

// Redis unreachable: cached keys (even expired) keep resolving, others are
// unresolved and counted; Redis is skipped for RetryAfter after a failure.
func TestUserResolverRedisDown(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer rdb.Close()
	failures := prometheus.NewCounter(prometheus.CounterOpts{Name: "f"})
	r := NewUserResolver(UserOptions{Redis: rdb, TTL: time.Minute, RetryAfter: time.Hour, Failures: failures})
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	ctx := context.Background()

	if u, src := r.Resolve(ctx, "bob", "h1"); u != "bob" || src != schema.UserExplicit {
		t.Fatalf("explicit: %s %s", u, src)
	}
	if u, src := r.Resolve(ctx, "", ""); u != AnonymousUser || src != schema.UserAnonymous {
		t.Fatalf("no key: %s %s", u, src)
	}
	r.store("known", userEntry{user: "alice", expires: now.Add(-time.Second)}) // expired
	r.store("unknown", userEntry{expires: now.Add(-time.Second)})
	if u, src := r.Resolve(ctx, "", "known"); u != "alice" || src != schema.UserAPIKey {
		t.Fatalf("stale cache entry during outage: %s %s", u, src)
	}
	start := time.Now()
	for range 100 {
		if u, src := r.Resolve(ctx, "", "never-seen"); u != UnresolvedUser || src != schema.UserUnresolved {
			t.Fatalf("uncached key during outage: %s %s", u, src)
		}
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("lookups kept waiting on Redis instead of skipping it for RetryAfter")
	}
	if u, src := r.Resolve(ctx, "", "unknown"); u != AnonymousUser || src != schema.UserAnonymous {
		t.Fatalf("cached unknown key: %s %s", u, src)
	}
	var m dto.Metric
	if err := failures.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != 100 {
		t.Fatalf("failures = %v, want 100", got)
	}
}

func TestUserResolverNoRedis(t *testing.T) {
	r := NewUserResolver(UserOptions{})
	if u, src := r.Resolve(context.Background(), "", "somehash"); u != AnonymousUser || src != schema.UserAnonymous {
		t.Fatalf("%s %s", u, src)
	}
	var nilResolver *UserResolver
	if u, src := nilResolver.Resolve(context.Background(), "x", ""); u != "x" || src != schema.UserExplicit {
		t.Fatalf("nil resolver: %s %s", u, src)
	}
}
