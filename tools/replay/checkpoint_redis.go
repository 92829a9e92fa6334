package replay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/internal/defaults"
)

// State is a job's checkpoint.
type State struct {
	Args      string // fingerprint of the job's arguments
	Object    string // key of the object being replayed ("" between objects)
	Line      int64  // lines of Object already acknowledged by JetStream
	Published int64
	Matched   int64
	Finished  bool
}

// Checkpoints keeps replay job states in Redis: a hash <prefix><job> and the
// set <prefix><job>:done of finished object keys. Both expire after TTL
// without updates.
type Checkpoints struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewCheckpoints stores checkpoints under prefix (e.g. "callpipe:replay:").
func NewCheckpoints(rdb redis.UniversalClient, prefix string, ttl time.Duration) *Checkpoints {
	return &Checkpoints{rdb: rdb, prefix: prefix, ttl: defaults.IfNotPositive(ttl, 30*24*time.Hour)}
}

func (c *Checkpoints) key(job string) string  { return c.prefix + job }
func (c *Checkpoints) dkey(job string) string { return c.prefix + job + ":done" }

// Load returns the job's state (zero when it never ran).
func (c *Checkpoints) Load(ctx context.Context, job string) (State, error) {
	h, err := c.rdb.HGetAll(ctx, c.key(job)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return State{}, fmt.Errorf("replay checkpoint %s: %w", c.key(job), err)
	}
	st := State{Args: h["args"], Object: h["object"], Finished: h["finished"] == "1"}
	for _, f := range []struct {
		name string
		dst  *int64
	}{{"line", &st.Line}, {"published", &st.Published}, {"matched", &st.Matched}} {
		if v := h[f.name]; v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return State{}, fmt.Errorf("replay checkpoint %s: field %s: %w", c.key(job), f.name, err)
			}
			*f.dst = n
		}
	}
	return st, nil
}

// Done returns the keys of the objects the job has finished.
func (c *Checkpoints) Done(ctx context.Context, job string) (map[string]bool, error) {
	keys, err := c.rdb.SMembers(ctx, c.dkey(job)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("replay checkpoint %s: %w", c.dkey(job), err)
	}
	done := make(map[string]bool, len(keys))
	for _, k := range keys {
		done[k] = true
	}
	return done, nil
}

// Save stores st; objectDone, when not empty, is added to the done set in the
// same transaction.
func (c *Checkpoints) Save(ctx context.Context, job string, st State, objectDone string) error {
	finished := "0"
	if st.Finished {
		finished = "1"
	}
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, c.key(job), "args", st.Args, "object", st.Object, "line", st.Line,
			"published", st.Published, "matched", st.Matched, "finished", finished)
		p.Expire(ctx, c.key(job), c.ttl)
		if objectDone != "" {
			p.SAdd(ctx, c.dkey(job), objectDone)
		}
		p.Expire(ctx, c.dkey(job), c.ttl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("replay checkpoint %s: %w", c.key(job), err)
	}
	return nil
}

// Delete forgets the job.
func (c *Checkpoints) Delete(ctx context.Context, job string) error {
	if err := c.rdb.Del(ctx, c.key(job), c.dkey(job)).Err(); err != nil {
		return fmt.Errorf("replay checkpoint %s: %w", c.key(job), err)
	}
	return nil
}
