package callsdb

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Server is what callpipe knows about the ClickHouse it talks to: its version
// (SELECT version()) and so which features it may use.
type Server struct {
	Version string // as reported, e.g. "18.16.1" or "26.7.2.1"
	Major   int
	Minor   int
}

// ModernSince is the first release with everything the modern path uses:
// insert_deduplication_token (22.2); table TTL, ALTER ... MODIFY/REMOVE TTL,
// MODIFY SETTING and non_replicated_deduplication_window are all older. One
// cut-off keeps two tested paths instead of one per feature: 18.16 (real
// server in CI) and 26.x (chDB in CI). Servers between 19.x and 22.1 take the
// portable path, which works on them too.
var ModernSince = Server{Major: 22, Minor: 2}

// ParseServerVersion parses the answer of SELECT version().
func ParseServerVersion(v string) (Server, error) {
	v = strings.TrimSpace(v)
	parts := strings.Split(v, ".")
	if len(parts) < 2 {
		return Server{}, fmt.Errorf("clickhouse version %q: want MAJOR.MINOR[...]", v)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return Server{}, fmt.Errorf("clickhouse version %q: want MAJOR.MINOR[...]", v)
	}
	return Server{Version: v, Major: major, Minor: minor}, nil
}

// DetectServer asks the server for its version.
func DetectServer(ctx context.Context, conn driver.Conn) (Server, error) {
	var v string
	if err := conn.QueryRow(ctx, QueryServerVersion).Scan(&v); err != nil {
		return Server{}, fmt.Errorf("clickhouse: SELECT version(): %w", err)
	}
	return ParseServerVersion(v)
}

// Modern reports whether the server is ModernSince or newer: then callpipe
// uses TTL for retention and insert deduplication tokens.
func (s Server) Modern() bool {
	return s.Major > ModernSince.Major || s.Major == ModernSince.Major && s.Minor >= ModernSince.Minor
}

func (s Server) String() string {
	if s.Modern() {
		return s.Version + " (TTL, insert_deduplication_token)"
	}
	return s.Version + " (portable subset: partition drops for retention, no insert dedup)"
}
