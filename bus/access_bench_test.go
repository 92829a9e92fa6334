package bus

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/callpipe/callpipe/internal/nettest"
)

// The JetStream operations a call can cost, by way of publishing and
// reading, against the local services' nats-server (1 KB messages, a file
// stream of one replica, as CALLPIPE_CALLS is):
//
//	. .state/services/env
//	CALLPIPE_NATS_PID=$(cat .state/services/nats/nats.pid) \
//	  go test ./bus -run '^$' -bench JetStream -benchtime 100000x
//
// Each reports the client's CPU per message (this process) and, with
// CALLPIPE_NATS_PID set, the server's. README ("What other ways of
// publishing and reading would save") has the figures.

func BenchmarkJetStreamPublish(b *testing.B) {
	b.Run("async-msg-id", func(b *testing.B) {
		js, stream := benchStream(b, false)
		defer deleteBenchStream(js, stream)
		data := benchPayload()
		measureJetStream(b, func() {
			for i := range b.N {
				m := nats.NewMsg(stream + ".a")
				m.Data = data
				m.Header.Set(jetstream.MsgIDHeader, "id-"+strconv.Itoa(i))
				if _, err := js.PublishMsgAsync(m); err != nil {
					b.Fatal(err)
				}
			}
			<-js.PublishAsyncComplete()
		})
	})
	b.Run("atomic-batch-1000", func(b *testing.B) {
		js, stream := benchStream(b, true)
		defer deleteBenchStream(js, stream)
		data := benchPayload()
		measureJetStream(b, func() {
			for start := 0; start < b.N; start += 1000 {
				bp, err := jetstreamext.NewBatchPublisher(js)
				if err != nil {
					b.Fatal(err)
				}
				end := min(start+1000, b.N)
				for i := start; i < end; i++ {
					m := nats.NewMsg(stream + ".a")
					m.Data = data
					m.Header.Set(jetstream.MsgIDHeader, "id-"+strconv.Itoa(i))
					if i == end-1 {
						if _, err := bp.CommitMsg(context.Background(), m); err != nil {
							b.Fatal(err)
						}
					} else if err := bp.AddMsg(m); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	})
}

func BenchmarkJetStreamRead(b *testing.B) {
	ctx := context.Background()
	fill := func(b *testing.B) (jetstream.JetStream, jetstream.Stream) {
		js, name := benchStream(b, false)
		data := benchPayload()
		for range b.N {
			if _, err := js.PublishAsync(name+".a", data); err != nil {
				b.Fatal(err)
			}
		}
		<-js.PublishAsyncComplete()
		s, err := js.Stream(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		return js, s
	}
	consumeAll := func(b *testing.B, c jetstream.Consumer, ack bool) {
		done := make(chan struct{})
		n := 0
		cc, err := c.Consume(func(m jetstream.Msg) {
			if ack {
				_ = m.Ack()
			}
			if n++; n == b.N {
				close(done)
			}
		}, jetstream.PullMaxMessages(1000))
		if err != nil {
			b.Fatal(err)
		}
		<-done
		cc.Stop()
	}
	b.Run("durable-pull-ack", func(b *testing.B) {
		js, s := fill(b)
		defer deleteBenchStream(js, s.CachedInfo().Config.Name)
		c, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000})
		if err != nil {
			b.Fatal(err)
		}
		measureJetStream(b, func() {
			consumeAll(b, c, true)
			_ = js.Conn().Flush() // the last acks reach the server
		})
	})
	b.Run("ordered", func(b *testing.B) {
		js, s := fill(b)
		defer deleteBenchStream(js, s.CachedInfo().Config.Name)
		c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		measureJetStream(b, func() { consumeAll(b, c, false) })
	})
	b.Run("direct-batch-1000", func(b *testing.B) {
		js, s := fill(b)
		name := s.CachedInfo().Config.Name
		defer deleteBenchStream(js, name)
		measureJetStream(b, func() {
			seq := uint64(1)
			for n := 0; n < b.N; {
				msgs, err := jetstreamext.GetBatch(ctx, js, name, 1000, jetstreamext.GetBatchSeq(seq))
				if err != nil {
					b.Fatal(err)
				}
				for m, err := range msgs {
					if err != nil {
						b.Fatal(err)
					}
					seq = m.Sequence + 1
					n++
				}
			}
		})
	})
}

func benchPayload() []byte {
	return []byte(strings.Repeat("the model answered the question in words; ", 25)[:1024])
}

// benchStream makes a file stream of its own (atomic: with atomic batch
// publishing allowed) on the services' nats-server.
func benchStream(b *testing.B, atomic bool) (jetstream.JetStream, string) {
	b.Helper()
	_, js := nettest.JetStream(b)
	name := fmt.Sprintf("BENCHACCESS_%d", time.Now().UnixNano())
	cfg := jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.FileStorage, AllowDirect: true, AllowAtomicPublish: atomic}
	if _, err := js.CreateStream(context.Background(), cfg); err != nil {
		b.Fatalf("create stream %s: %v", name, err)
	}
	return js, name
}

func deleteBenchStream(js jetstream.JetStream, name string) {
	_ = js.DeleteStream(context.Background(), name)
}

// measureJetStream runs f (b.N messages) and reports the CPU per message of
// this process and, with CALLPIPE_NATS_PID, of the server.
func measureJetStream(b *testing.B, f func()) {
	b.Helper()
	pid, _ := strconv.Atoi(os.Getenv("CALLPIPE_NATS_PID"))
	server0, client0 := processCPU(b, pid), ownCPU()
	b.ResetTimer()
	f()
	b.StopTimer()
	perMsg := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(b.N) }
	b.ReportMetric(perMsg(ownCPU()-client0), "client-µs/msg")
	if pid > 0 {
		b.ReportMetric(perMsg(processCPU(b, pid)-server0), "server-µs/msg")
	}
}

func ownCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU is the user and system CPU of process pid from /proc (0: none).
func processCPU(b *testing.B, pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("CALLPIPE_NATS_PID: %v", err)
	}
	// fields after the command name: state is the 1st, utime the 12th, stime the 13th
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		b.Fatalf("/proc/%d/stat: %d fields after the command", pid, len(fields))
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * (time.Second / 100) // USER_HZ
}
