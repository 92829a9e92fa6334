package transform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/internal/defaults"
	"github.com/callpipe/callpipe/schema"
)

// DefaultUserKeyPrefix prefixes the Redis hash of each API key: the hash
// "callpipe:apikey:<sha256 hex of the key>" holds the fields user, name,
// prefix and created.
const DefaultUserKeyPrefix = "callpipe:apikey:"

// Values of schema.Call.UserID when no user is known.
const (
	AnonymousUser  = "anonymous"
	UnresolvedUser = "unresolved"
)

// UserOptions configure a UserResolver.
type UserOptions struct {
	// Redis is where API keys are looked up; nil resolves every key to anonymous.
	Redis     redis.UniversalClient
	KeyPrefix string        // default DefaultUserKeyPrefix
	TTL       time.Duration // how long a found key is trusted (default 5m)
	// NegativeTTL is how long an unknown key stays unknown (default 1m).
	NegativeTTL time.Duration
	// Timeout bounds one lookup (default 1s).
	Timeout time.Duration
	// RetryAfter is how long lookups skip Redis after a failure, so that an
	// outage costs one timeout per interval instead of one per call (default 1s).
	RetryAfter time.Duration
	// MaxEntries bounds the cache (default 100,000); when full, expired
	// entries are dropped.
	MaxEntries int
	// Failures counts lookups that could not be answered (Redis down, not cached).
	Failures prometheus.Counter
	// Log gets one warning per failed lookup that starts a RetryAfter pause.
	Log *slog.Logger
}

type userEntry struct {
	user    string // "" = key unknown
	expires time.Time
}

// UserResolver turns a call's explicit user or API key hash into a user id,
// with an in-process TTL cache in front of Redis. With Redis unreachable it
// answers from the cache, expired entries included, and marks the rest
// unresolved. It is safe for concurrent use.
type UserResolver struct {
	o         UserOptions
	mu        sync.RWMutex
	cache     map[string]userEntry
	downUntil atomic.Int64 // unix nanos; lookups skip Redis before it
	now       func() time.Time
}

// NewUserResolver returns a resolver with o's defaults applied.
func NewUserResolver(o UserOptions) *UserResolver {
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultUserKeyPrefix
	}
	o.TTL = defaults.IfNotPositive(o.TTL, 5*time.Minute)
	o.NegativeTTL = defaults.IfNotPositive(o.NegativeTTL, time.Minute)
	o.Timeout = defaults.IfNotPositive(o.Timeout, time.Second)
	o.RetryAfter = defaults.IfNotPositive(o.RetryAfter, time.Second)
	o.MaxEntries = defaults.IfNotPositive(o.MaxEntries, 100_000)
	return &UserResolver{o: o, cache: map[string]userEntry{}, now: time.Now}
}

// Resolve returns the user id and its source (schema.User*).
func (r *UserResolver) Resolve(ctx context.Context, explicit, keyHash string) (string, string) {
	if explicit != "" {
		return explicit, schema.UserExplicit
	}
	if keyHash == "" || r == nil || r.o.Redis == nil {
		return AnonymousUser, schema.UserAnonymous
	}
	now := r.now()
	r.mu.RLock()
	e, cached := r.cache[keyHash]
	r.mu.RUnlock()
	if cached && now.Before(e.expires) {
		return userOf(e)
	}
	if now.UnixNano() < r.downUntil.Load() {
		return r.fallback(e, cached)
	}
	lctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	user, err := r.o.Redis.HGet(lctx, r.o.KeyPrefix+keyHash, "user").Result()
	cancel()
	switch {
	case errors.Is(err, redis.Nil):
		r.store(keyHash, userEntry{expires: now.Add(r.o.NegativeTTL)})
		return AnonymousUser, schema.UserAnonymous
	case err != nil:
		if ctx.Err() == nil {
			r.downUntil.Store(now.Add(r.o.RetryAfter).UnixNano())
			if r.o.Log != nil {
				r.o.Log.Warn("redis user lookup failed; answering from the cache, marking the rest unresolved",
					"err", err, "retry_after", r.o.RetryAfter)
			}
		}
		return r.fallback(e, cached)
	}
	e = userEntry{user: user, expires: now.Add(r.o.TTL)}
	r.store(keyHash, e)
	return userOf(e)
}

// fallback answers from a stale cache entry, or marks the call unresolved.
func (r *UserResolver) fallback(e userEntry, cached bool) (string, string) {
	if cached {
		return userOf(e)
	}
	if r.o.Failures != nil {
		r.o.Failures.Inc()
	}
	return UnresolvedUser, schema.UserUnresolved
}

func userOf(e userEntry) (string, string) {
	if e.user == "" {
		return AnonymousUser, schema.UserAnonymous
	}
	return e.user, schema.UserAPIKey
}

func (r *UserResolver) store(keyHash string, e userEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.o.MaxEntries {
		now := r.now()
		for k, v := range r.cache {
			if now.After(v.expires) {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= r.o.MaxEntries {
			clear(r.cache)
		}
	}
	r.cache[keyHash] = e
}

// UserRecord is one API key registered in Redis.
type UserRecord struct {
	KeyHash string `json:"key_hash"`
	Prefix  string `json:"prefix,omitempty"`
	User    string `json:"user"`
	Name    string `json:"name,omitempty"`
	Created string `json:"created,omitempty"`
}

// AddUser registers key (stored only as schema.HashAPIKey(key) and its
// display prefix) as belonging to user.
func AddUser(ctx context.Context, rdb redis.UniversalClient, keyPrefix, key, user, name string) (UserRecord, error) {
	if key == "" || user == "" {
		return UserRecord{}, errors.New("key and user are required")
	}
	if keyPrefix == "" {
		keyPrefix = DefaultUserKeyPrefix
	}
	rec := UserRecord{KeyHash: schema.HashAPIKey(key), Prefix: schema.APIKeyPrefix(key), User: user, Name: name,
		Created: time.Now().UTC().Format(time.RFC3339)}
	k := keyPrefix + rec.KeyHash
	pipe := rdb.TxPipeline()
	pipe.Del(ctx, k)
	fields := []any{"user", rec.User, "prefix", rec.Prefix, "created", rec.Created}
	if name != "" {
		fields = append(fields, "name", name)
	}
	pipe.HSet(ctx, k, fields...)
	if _, err := pipe.Exec(ctx); err != nil {
		return UserRecord{}, fmt.Errorf("redis: %w", err)
	}
	return rec, nil
}

// RemoveUser deletes the key whose hash is keyHash; it reports whether it existed.
func RemoveUser(ctx context.Context, rdb redis.UniversalClient, keyPrefix, keyHash string) (bool, error) {
	if keyPrefix == "" {
		keyPrefix = DefaultUserKeyPrefix
	}
	n, err := rdb.Del(ctx, keyPrefix+keyHash).Result()
	if err != nil {
		return false, fmt.Errorf("redis: %w", err)
	}
	return n > 0, nil
}

// ListUsers returns every registered key, sorted by user then prefix.
func ListUsers(ctx context.Context, rdb redis.UniversalClient, keyPrefix string) ([]UserRecord, error) {
	if keyPrefix == "" {
		keyPrefix = DefaultUserKeyPrefix
	}
	var out []UserRecord
	iter := rdb.Scan(ctx, 0, keyPrefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		m, err := rdb.HGetAll(ctx, k).Result()
		if err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, UserRecord{KeyHash: strings.TrimPrefix(k, keyPrefix), Prefix: m["prefix"],
			User: m["user"], Name: m["name"], Created: m["created"]})
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].User != out[j].User {
			return out[i].User < out[j].User
		}
		return out[i].Prefix < out[j].Prefix
	})
	return out, nil
}
