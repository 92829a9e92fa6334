package export

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lease is a job's exclusive right to run, held in Redis as
// <prefix>lease:<job> = "<fence> <owner>" with a TTL (SET NX PX). The fence
// comes from INCR <prefix>fence:<job>, so every holder of a job has a larger
// fence than the ones before it; checkpoint writes and the release are Lua
// scripts that act only while the key still holds this lease's value, so a
// holder whose lease expired (paused process, partition) cannot overwrite
// the state of the one that took over.
type Lease struct {
	rdb   redis.UniversalClient
	key   string
	value string
	Fence int64
	Owner string
	ttl   time.Duration
}

// LeaseHeldError says another process runs the job.
type LeaseHeldError struct {
	Job    string
	Holder string        // owner of the current lease
	Fence  int64         // its fence
	TTL    time.Duration // until it expires unless renewed
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("export %s is already running: lease held by %s (fence %d, expires in %s unless renewed)",
		e.Job, e.Holder, e.Fence, e.TTL.Round(time.Millisecond))
}

// ErrLeaseLost means the lease expired or was taken over while the job ran.
var ErrLeaseLost = errors.New("export: lease lost")

var (
	renewScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)
	releaseScript = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)
	// fencedSet writes KEYS[2] only while KEYS[1] holds ARGV[1].
	fencedSetScript = redis.NewScript(`if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1`)
)

func leaseKey(prefix, job string) string { return prefix + "lease:" + job }
func fenceKey(prefix, job string) string { return prefix + "fence:" + job }

// acquireLease takes the job's lease or returns *LeaseHeldError.
// The fence counter lives as long as the job's state (fenceTTL).
func acquireLease(ctx context.Context, rdb redis.UniversalClient, prefix, job, owner string, ttl, fenceTTL time.Duration) (*Lease, error) {
	key := leaseKey(prefix, job)
	// Check first so a busy job does not burn fences.
	if held, err := readLease(ctx, rdb, prefix, job); err != nil {
		return nil, err
	} else if held != nil {
		return nil, held
	}
	pipe := rdb.TxPipeline()
	incr := pipe.Incr(ctx, fenceKey(prefix, job))
	pipe.Expire(ctx, fenceKey(prefix, job), fenceTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("export lease: redis INCR: %w", err)
	}
	fence := incr.Val()
	value := strconv.FormatInt(fence, 10) + " " + owner
	ok, err := rdb.SetNX(ctx, key, value, ttl).Result()
	if err != nil {
		return nil, fmt.Errorf("export lease: redis SET NX: %w", err)
	}
	if !ok {
		if held, err := readLease(ctx, rdb, prefix, job); err != nil {
			return nil, err
		} else if held != nil {
			return nil, held
		}
		return nil, fmt.Errorf("export lease %s: contended, try again", job)
	}
	return &Lease{rdb: rdb, key: key, value: value, Fence: fence, Owner: owner, ttl: ttl}, nil
}

// readLease returns the current holder of a job's lease, nil when free.
func readLease(ctx context.Context, rdb redis.UniversalClient, prefix, job string) (*LeaseHeldError, error) {
	key := leaseKey(prefix, job)
	pipe := rdb.Pipeline()
	get := pipe.Get(ctx, key)
	pttl := pipe.PTTL(ctx, key)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("export lease: redis GET: %w", err)
	}
	v, err := get.Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("export lease: redis GET: %w", err)
	}
	f, owner, _ := strings.Cut(v, " ")
	fence, _ := strconv.ParseInt(f, 10, 64)
	return &LeaseHeldError{Job: job, Holder: owner, Fence: fence, TTL: max(pttl.Val(), 0)}, nil
}

// renew extends the lease; ErrLeaseLost when it is no longer ours.
func (l *Lease) renew(ctx context.Context) error {
	n, err := renewScript.Run(ctx, l.rdb, []string{l.key}, l.value, l.ttl.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("export lease renew: %w", err)
	}
	if n == 0 {
		return ErrLeaseLost
	}
	return nil
}

// keepAlive renews the lease every ttl/3 until ctx ends. It calls lost when
// the lease is gone or could not be renewed before it would expire.
func (l *Lease) keepAlive(ctx context.Context, lost func(error)) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, l.ttl/3)
		err := l.renew(rctx)
		cancel()
		switch {
		case err == nil:
			lastOK = time.Now()
		case errors.Is(err, ErrLeaseLost):
			lost(err)
			return
		case time.Since(lastOK) > l.ttl*2/3:
			lost(fmt.Errorf("%w: not renewed for %s: %w", ErrLeaseLost, time.Since(lastOK).Round(time.Millisecond), err))
			return
		}
	}
}

// set writes key = value (with ttl) only while the lease is ours.
func (l *Lease) set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	n, err := fencedSetScript.Run(ctx, l.rdb, []string{l.key, key}, l.value, value, ttl.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("export state write: %w", err)
	}
	if n == 0 {
		return ErrLeaseLost
	}
	return nil
}

// check fails with ErrLeaseLost unless the lease is still ours.
func (l *Lease) check(ctx context.Context) error { return l.renew(ctx) }

// release deletes the lease if it is still ours.
func (l *Lease) release(ctx context.Context) error {
	if _, err := releaseScript.Run(ctx, l.rdb, []string{l.key}, l.value).Result(); err != nil {
		return fmt.Errorf("export lease release: %w", err)
	}
	return nil
}
