package bus

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestClassifyReplicas(t *testing.T) {
	info := &jetstream.StreamInfo{
		Config: jetstream.StreamConfig{Name: "S", Replicas: 3},
		Cluster: &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{
			{Name: "n3", Offline: true, Lag: 40},
			{Name: "n2", Current: true, Lag: 7, Active: 1500 * time.Millisecond},
		}},
	}
	h := ClassifyReplicas(info)
	if h.Healthy() {
		t.Fatal("a stream with an offline and a lagging replica is not healthy")
	}
	if got := strings.Join(h.Degraded(), ","); got != "n3,n2" {
		t.Errorf("degraded %q, want offline first: n3,n2", got)
	}
	if got, want := h.String(), "R3, leader n1, current -, lagging n2 (7 behind, seen 1.5s ago), offline n3"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}

	info.Cluster.Replicas = []*jetstream.PeerInfo{{Name: "n2", Current: true}, {Name: "n3", Current: true}}
	if h := ClassifyReplicas(info); !h.Healthy() || strings.Join(h.Current, ",") != "n2,n3" {
		t.Errorf("all current: %+v", h)
	}

	info.Cluster = &jetstream.ClusterInfo{Leader: "", Replicas: []*jetstream.PeerInfo{{Name: "n2", Current: true}}}
	if h := ClassifyReplicas(info); h.Healthy() || !strings.Contains(h.String(), "leader NONE") {
		t.Errorf("no leader must be unhealthy: %s", h)
	}

	info.Cluster = &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{{Name: "n2", Current: true}}}
	if h := ClassifyReplicas(info); h.Healthy() || len(h.Offline) != 1 {
		t.Errorf("a missing peer of R3 must count offline: %s", h)
	}

	r1 := &jetstream.StreamInfo{Config: jetstream.StreamConfig{Name: "S", Replicas: 1}, Cluster: &jetstream.ClusterInfo{Leader: "n1"}}
	if h := ClassifyReplicas(r1); h.String() != "R1 (on n1)" || !h.Healthy() {
		t.Errorf("R1 stream: %s healthy=%v", h, h.Healthy())
	}

	single := &jetstream.StreamInfo{Config: jetstream.StreamConfig{Name: "S", Replicas: 1}}
	if h := ClassifyReplicas(single); h.String() != "R1, single server" || !h.Healthy() {
		t.Errorf("single server: %s healthy=%v", h, h.Healthy())
	}
}
