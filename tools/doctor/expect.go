package doctor

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
)

// ExpectPipeline is what the bus of a deployment has in JetStream: every
// stream, and the durable consumers (from consumers, stage → consumer as
// configured) of the stages that run (runs[stage]), in bus.Stages order.
// dashboardLangfuse adds the Langfuse stage's consumer when Langfuse settings
// were saved from the dashboard (the stage is built in but langfuse.host is
// empty).
func ExpectPipeline(url string, replicas int, consumers map[string]bus.Consumer, runs map[string]bool, dashboardLangfuse bool) NATSExpect {
	exp := NATSExpect{URL: url, Streams: bus.Streams, Replicas: replicas, DeadLetters: bus.DeadLetterStream}
	for _, s := range bus.Stages {
		if runs[s.Name] {
			c := consumers[s.Name]
			exp.Consumers = append(exp.Consumers, Consumer{Stream: c.Stream, Name: c.Name, Stage: c.Stage})
		}
	}
	if dashboardLangfuse {
		c := consumers[bus.StageLangfuse]
		exp.RuntimeConsumers = func(ctx context.Context, js jetstream.JetStream) []Consumer {
			// no sealer: a sealed value is saved, though unreadable here
			if _, ok, err := SavedLangfuse(ctx, js, nil); !ok && err == nil {
				return nil
			}
			return []Consumer{{Stream: c.Stream, Name: c.Name, Stage: c.Stage}}
		}
	}
	return exp
}
