package doctor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
)

// NATSExpect is what a working deployment has in JetStream.
type NATSExpect struct {
	URL      string // for messages only (credentials are never printed)
	Streams  []string
	Replicas int // nats.stream.replicas; 0 skips the comparison
	// DeadLetters is the stream whose messages are reported as a warning.
	DeadLetters string
	Consumers   []Consumer
	// RuntimeConsumers, when set, adds consumers expected because of state
	// kept in JetStream itself (settings saved from the dashboard).
	RuntimeConsumers func(ctx context.Context, js jetstream.JetStream) []Consumer
}

// Consumer is a durable consumer a worker stage creates when it starts.
type Consumer struct {
	Stream string
	Name   string
	Stage  string // the worker stage that creates it (for the fix)
}

// NATS connects (connect must give up when ctx ends), checks that JetStream
// is enabled, that every stream exists and that every durable consumer exists
// and is being pulled by a worker.
func NATS(connect func(ctx context.Context) (*nats.Conn, error), exp NATSExpect) Check {
	return func(ctx context.Context) []Result {
		nc, err := connect(ctx)
		if err != nil {
			return []Result{fail("nats", "check nats.url (CALLPIPE_NATS_URL) and that nats-server is running and reachable; credentials: nats.user/password, token, nkey_file or creds_file",
				"%s: %v", exp.URL, err)}
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return []Result{fail("nats", "", "%s: jetstream client: %v", exp.URL, err)}
		}
		ai, err := js.AccountInfo(ctx)
		if err != nil {
			if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
				return []Result{fail("nats", "start nats-server with JetStream (-js, or `jetstream {}` in its config; Helm: config.jetstream.enabled=true) and enable it for this account",
					"%s: connected to server %s, but JetStream is not enabled: %v", exp.URL, nc.ConnectedServerVersion(), err)}
			}
			return []Result{fail("nats", "check that the JetStream cluster has a meta leader (nats server report jetstream) and that the account may use JetStream",
				"%s: connected, but JetStream does not answer: %v", exp.URL, err)}
		}
		rs := []Result{ok("nats", "%s: server %s, JetStream enabled (%d streams, %d consumers in the account)",
			nc.ConnectedUrlRedacted(), nc.ConnectedServerVersion(), ai.Streams, ai.Consumers)}

		existing := map[string]bool{}
		for _, name := range exp.Streams {
			r, exists := streamResult(ctx, js, name, exp)
			existing[name] = exists
			rs = append(rs, r)
		}
		consumers := exp.Consumers
		if exp.RuntimeConsumers != nil {
			consumers = append(slices.Clone(consumers), exp.RuntimeConsumers(ctx, js)...)
		}
		for _, c := range consumers {
			if !existing[c.Stream] {
				continue // the stream's own line already says what to do
			}
			rs = append(rs, consumerResult(ctx, js, c))
		}
		return rs
	}
}

func streamResult(ctx context.Context, js jetstream.JetStream, name string, exp NATSExpect) (Result, bool) {
	label := "stream " + name
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fail(label, "run `callpipe migrate` (it creates the streams; every component also creates the ones it uses at start)", "missing"), false
	}
	if err != nil {
		return fail(label, "check the JetStream cluster (nats stream info "+name+")", "info: %v", err), false
	}
	info := s.CachedInfo()
	st := info.State
	h := bus.ClassifyReplicas(info)
	r := ok(label, "%d messages, %s, replicas %s", st.Msgs, bytesString(st.Bytes), h)
	if info.Cluster != nil && info.Cluster.Leader == "" && info.Config.Replicas > 1 {
		return fail(label, "the stream has no leader: check that a majority of its NATS servers are up (nats stream report)",
			"no leader (replicas %s)", h), true
	}
	if !h.Healthy() {
		return warn(label, "start the NATS server named (or check its routes); the stream keeps accepting and delivering while a majority of its replicas is current, and the server catches up when it is back",
			"replica %s not current: %s", strings.Join(h.Degraded(), ", "), h), true
	}
	if name == exp.DeadLetters && st.Msgs > 0 {
		return warn(label, "inspect them with `callpipe dlq ls` / `callpipe dlq show SEQ`, fix the cause, re-drive with `callpipe dlq retry SEQ`",
			"%d dead letters (%s)", st.Msgs, bytesString(st.Bytes)), true
	}
	if exp.Replicas > 0 && name != exp.DeadLetters && info.Config.Replicas != exp.Replicas {
		return warn(label, "run `callpipe migrate` to apply nats.stream.replicas",
			"replicas %d, but nats.stream.replicas is %d", info.Config.Replicas, exp.Replicas), true
	}
	return r, true
}

func consumerResult(ctx context.Context, js jetstream.JetStream, c Consumer) Result {
	label := "consumer " + c.Name
	cons, err := js.Consumer(ctx, c.Stream, c.Name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return warn(label, fmt.Sprintf("start a worker with --stages %s (it creates the consumer); until then %s is not processed by this stage", c.Stage, c.Stream),
			"missing on %s", c.Stream)
	}
	if err != nil {
		return fail(label, "check the JetStream cluster (nats consumer info "+c.Stream+" "+c.Name+")", "info on %s: %v", c.Stream, err)
	}
	return consumerState(label, c, cons.CachedInfo())
}

// consumerState judges a consumer by its backlog and whether anyone pulls.
func consumerState(label string, c Consumer, info *jetstream.ConsumerInfo) Result {
	detail := fmt.Sprintf("on %s: %d pending, %d unacknowledged, %d redelivered, %d pull requests waiting",
		c.Stream, info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting)
	if info.NumWaiting == 0 && info.NumAckPending == 0 && info.NumPending > 0 {
		return warn(label, fmt.Sprintf("no worker is pulling: start or scale `callpipe worker --stages %s` (KEDA scales it on this lag)", c.Stage), "%s", detail)
	}
	return ok(label, "%s", detail)
}

func bytesString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
