package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ReplicaHealth is the state of one stream's replicas in a JetStream
// cluster, as its leader sees them.
type ReplicaHealth struct {
	Stream   string
	Replicas int // configured
	// Clustered: the server runs in a JetStream cluster (the stream info
	// has cluster state); a single server has no peers to judge.
	Clustered bool
	Leader    string // "" when the stream has no leader (no quorum)
	Current   []string
	Lagging   []LaggingPeer
	Offline   []string
}

// LaggingPeer is a replica that is online but behind the leader.
type LaggingPeer struct {
	Name string
	Lag  uint64        // operations behind
	Seen time.Duration // since the leader last heard from it
}

// Healthy reports whether the stream has a leader and every replica is
// online and current.
func (h ReplicaHealth) Healthy() bool {
	if !h.Clustered {
		return true
	}
	return h.Leader != "" && len(h.Lagging) == 0 && len(h.Offline) == 0
}

// Degraded lists the replicas that are not current (offline first), for
// messages that must name the lost node.
func (h ReplicaHealth) Degraded() []string {
	out := make([]string, 0, len(h.Offline)+len(h.Lagging))
	out = append(out, h.Offline...)
	for _, p := range h.Lagging {
		out = append(out, p.Name)
	}
	return out
}

// String is one line: "R3, leader n1, current n2, lagging n3 (12 behind, seen 1.5s ago), offline -".
func (h ReplicaHealth) String() string {
	if !h.Clustered {
		return fmt.Sprintf("R%d, single server", h.Replicas)
	}
	leader := h.Leader
	if leader == "" {
		leader = "NONE"
	}
	if h.Replicas == 1 {
		return fmt.Sprintf("R1 (on %s)", leader)
	}
	lag := make([]string, 0, len(h.Lagging))
	for _, p := range h.Lagging {
		lag = append(lag, fmt.Sprintf("%s (%d behind, seen %s ago)", p.Name, p.Lag, p.Seen.Round(100*time.Millisecond)))
	}
	list := func(s []string) string {
		if len(s) == 0 {
			return "-"
		}
		return strings.Join(s, " ")
	}
	return fmt.Sprintf("R%d, leader %s, current %s, lagging %s, offline %s",
		h.Replicas, leader, list(h.Current), list(lag), list(h.Offline))
}

// ReplicaHealthOf reads a stream's info and classifies its replicas. A
// stream on a single server (no cluster info) has only its leader.
func ReplicaHealthOf(ctx context.Context, js jetstream.JetStream, stream string) (ReplicaHealth, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return ReplicaHealth{Stream: stream}, fmt.Errorf("stream %s info: %w", stream, err)
	}
	return ClassifyReplicas(s.CachedInfo()), nil
}

// ClassifyReplicas sorts a stream's peers into current, lagging and offline.
// A peer is current when online with no lag; the leader is listed apart.
func ClassifyReplicas(info *jetstream.StreamInfo) ReplicaHealth {
	h := ReplicaHealth{Stream: info.Config.Name, Replicas: max(info.Config.Replicas, 1)}
	if info.Cluster == nil {
		return h
	}
	h.Clustered = true
	h.Leader = info.Cluster.Leader
	for _, p := range info.Cluster.Replicas {
		if p == nil {
			continue
		}
		switch {
		case p.Offline:
			h.Offline = append(h.Offline, p.Name)
		case !p.Current || p.Lag > 0:
			h.Lagging = append(h.Lagging, LaggingPeer{Name: p.Name, Lag: p.Lag, Seen: p.Active})
		default:
			h.Current = append(h.Current, p.Name)
		}
	}
	sort.Strings(h.Current)
	sort.Strings(h.Offline)
	sort.Slice(h.Lagging, func(i, j int) bool { return h.Lagging[i].Name < h.Lagging[j].Name })
	// A replicated stream whose leader sees fewer peers than configured has
	// lost track of one: count it offline under an unknown name.
	if known := 1 + len(info.Cluster.Replicas); h.Leader != "" && known < h.Replicas {
		for i := known; i < h.Replicas; i++ {
			h.Offline = append(h.Offline, "(unknown peer)")
		}
	}
	return h
}

// LogReplicas reports each stream's replicas after provisioning, giving
// replicas of a stream just created or updated settle to become current
// before it reports them as behind. A replicated stream with a replica
// offline or behind still works, so it is a warning naming the server, not
// an error.
func LogReplicas(ctx context.Context, js jetstream.JetStream, settle time.Duration, log *slog.Logger) error {
	for _, name := range Streams {
		var h ReplicaHealth
		var err error
		for deadline := time.Now().Add(settle); ; {
			if h, err = ReplicaHealthOf(ctx, js, name); err != nil {
				return err
			}
			if h.Healthy() || time.Now().After(deadline) {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(250 * time.Millisecond):
			}
		}
		if h.Healthy() {
			log.Info("stream replicas", "stream", name, "replicas", h.String())
			continue
		}
		log.Warn("stream replicas not all current", "stream", name, "replicas", h.String(), "not_current", strings.Join(h.Degraded(), ","))
	}
	return nil
}
