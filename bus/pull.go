package bus

import (
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
)

// Pull hands it's messages, each turned into a T by conv in the pulling
// goroutine (so that per-message work overlaps the consumer of the channel),
// to a channel of buf slots, until the iterator is stopped or drained; then
// the channel is closed. A failed pull is logged under what and retried: the
// iterator keeps its pull requests going by itself.
func Pull[T any](it jetstream.MessagesContext, buf int, log *slog.Logger, what string, conv func(jetstream.Msg) T) <-chan T {
	out := make(chan T, buf)
	go func() {
		defer close(out)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					return
				}
				log.Warn(what+": pull", "err", err)
				continue
			}
			out <- conv(m)
		}
	}()
	return out
}
