package bus

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

type deliveredMsg struct {
	jetstream.Msg
	n uint64
}

func (m deliveredMsg) Metadata() (*jetstream.MsgMetadata, error) {
	if m.n == 0 {
		return nil, errors.New("no metadata")
	}
	return &jetstream.MsgMetadata{NumDelivered: m.n}, nil
}

func TestDeliveryLimit(t *testing.T) {
	l := DeliveryLimit{Max: 3}
	for _, c := range []struct {
		n              uint64
		last, exceeded bool
	}{{0, false, false}, {1, false, false}, {2, false, false}, {3, true, false}, {4, true, true}, {40, true, true}} {
		m := deliveredMsg{n: c.n}
		if got := l.Last(m); got != c.last {
			t.Errorf("delivery %d: Last = %v, want %v", c.n, got, c.last)
		}
		if got := l.Exceeded(m); got != c.exceeded {
			t.Errorf("delivery %d: Exceeded = %v, want %v", c.n, got, c.exceeded)
		}
	}
	if got := l.Reason(errors.New("stream full")); got != "max deliveries (3) exceeded: stream full" {
		t.Errorf("reason %q", got)
	}
	if got := l.Reason(nil); got != "max deliveries (3) exceeded" {
		t.Errorf("reason %q", got)
	}
}
