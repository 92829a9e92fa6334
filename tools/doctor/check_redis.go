package doctor

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Redis pings the server that holds the API-key → user mapping.
func Redis(addr string, rdb *redis.Client) Check {
	return func(ctx context.Context) []Result {
		if err := rdb.Ping(ctx).Err(); err != nil {
			fix := "check redis.addr (CALLPIPE_REDIS_ADDR) and that Redis is running; while it is down, API keys not cached resolve to user \"unresolved\""
			msg := err.Error()
			if strings.Contains(msg, "NOAUTH") || strings.Contains(msg, "WRONGPASS") || strings.Contains(msg, "invalid password") {
				fix = "check redis.password and redis.username (CALLPIPE_REDIS_PASSWORD, CALLPIPE_REDIS_USERNAME)"
			}
			return []Result{fail("redis", fix, "%s: %v", addr, err)}
		}
		return []Result{ok("redis", "%s: PING answered", addr)}
	}
}
