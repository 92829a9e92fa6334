package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// EnvServicesCluster is set to 1 by the env file of `services.sh up --cluster`.
const EnvServicesCluster = "CALLPIPE_SERVICES_CLUSTER"

// ClusterStack is the scale-out stack of `deploy/local/services.sh up
// --cluster`: three NATS servers, ClickHouse 2 shards x 2 replicas, MinIO
// over 4 drives, reached through the variables of its env file.
type ClusterStack struct {
	NATSURL   string   // the seed list, comma-separated
	NATSNodes []string // services.sh node names, in seed order
	// NATSMonitors are the servers' monitoring endpoints (http://host:port), in seed order
	NATSMonitors []string
	CHAddr       string // every ClickHouse server's native host:port, comma-separated
	CHNodes      []CHNode
	Cluster      string // remote_servers name
	S3           S3Config
	script       string
	stateDir     string
}

// CHNode is one clickhouse-server of the cluster stack.
type CHNode struct {
	Name           string // services.sh node name (ch-s1r1 ...)
	Native         string
	Shard, Replica int
}

// Cluster returns the cluster stack from the environment, or skips the test
// (fails it when CI is set) when the env file of `services.sh up --cluster`
// is not loaded.
func Cluster(t testing.TB) ClusterStack {
	t.Helper()
	vals, ok := fromEnv(t, "CALLPIPE_NATS_URL", "CALLPIPE_CLICKHOUSE_ADDR", "CALLPIPE_CLICKHOUSE_CLUSTER",
		"CALLPIPE_S3_ENDPOINT", "CALLPIPE_S3_ACCESS_KEY", "CALLPIPE_S3_SECRET_KEY")
	if !ok || os.Getenv(EnvServicesCluster) != "1" {
		unavailable(t, "the cluster stack is not loaded (%s is not 1); start it with `go tool task services:up:cluster` "+
			"and load its env: eval \"$(deploy/local/services.sh env --cluster)\"", EnvServicesCluster)
	}
	c := ClusterStack{NATSURL: vals[0], CHAddr: vals[1], Cluster: vals[2],
		S3: S3Config{Endpoint: vals[3], AccessKey: vals[4], SecretKey: vals[5]}}
	seeds := strings.Split(c.NATSURL, ",")
	addrs := strings.Split(c.CHAddr, ",")
	if len(seeds) != 3 || len(addrs) != 4 {
		t.Fatalf("harness: the cluster stack has 3 NATS seeds and 4 ClickHouse servers, got %q and %q", c.NATSURL, c.CHAddr)
	}
	for i := range seeds {
		c.NATSNodes = append(c.NATSNodes, "nats-"+string(rune('1'+i)))
	}
	// services.sh lists the servers shard by shard, replicas in order
	for i, a := range addrs {
		shard, replica := i/2+1, i%2+1
		c.CHNodes = append(c.CHNodes, CHNode{Name: "ch-s" + string(rune('0'+shard)) + "r" + string(rune('0'+replica)),
			Native: a, Shard: shard, Replica: replica})
	}
	if v := os.Getenv("CALLPIPE_CLUSTER_NATS_MONITOR"); v != "" {
		c.NATSMonitors = strings.Split(v, ",")
	}
	if len(c.NATSMonitors) != len(seeds) {
		t.Fatalf("harness: CALLPIPE_CLUSTER_NATS_MONITOR lists %d monitoring endpoints for %d NATS servers (restart the stack with this services.sh)", len(c.NATSMonitors), len(seeds))
	}
	c.stateDir = os.Getenv("CALLPIPE_CLUSTER_STATE_DIR")
	c.script = os.Getenv(EnvServicesScript)
	if c.script == "" {
		c.script = filepath.Join(RepoRoot(t), "deploy", "local", "services.sh")
	}
	return c
}

// Node runs `services.sh CMD --cluster NODE` (start, stop, kill, restart)
// and fails the test if it fails.
func (c ClusterStack) Node(t testing.TB, cmd, node string) {
	t.Helper()
	if err := runServices(t, c.script, cmd, "--cluster", node); err != nil {
		t.Fatal(err)
	}
}

// RemoveMinIODrive deletes drive folder n (1..4) of the stack's MinIO under
// the running server, as a lost disk.
func (c ClusterStack) RemoveMinIODrive(t testing.TB, n int) {
	t.Helper()
	if c.stateDir == "" {
		t.Fatal("harness: CALLPIPE_CLUSTER_STATE_DIR is not set (load the env of services.sh up --cluster)")
	}
	dir := filepath.Join(c.stateDir, "minio", "drive"+string(rune('0'+n)))
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("harness: MinIO drive %d: %v", n, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatalf("harness: remove MinIO drive %d: %v", n, err)
	}
}
