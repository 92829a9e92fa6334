package bus

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestBatchPublishSupported(t *testing.T) {
	cases := map[string]bool{
		"2.15.2":       true,
		"2.14.0":       true,
		"v2.14.1":      true,
		"2.14-beta.1":  true,
		"3.0.0":        true,
		"2.12.3":       false,
		"2.13.9":       false,
		"2.9.25":       false,
		"1.20.0":       false,
		"":             false,
		"2":            false,
		"x.y.z":        false,
		"2.1x.0":       false,
		"2.14.0-RC.1":  true,
		"2.10.0-beta":  false,
		"10.0.0-local": true,
	}
	for v, want := range cases {
		if got := BatchPublishSupported(v); got != want {
			t.Errorf("BatchPublishSupported(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestCallsStreamConfigLeavesBatchingToEnsureStreams(t *testing.T) {
	// the normalized stream is derived from this config and must not inherit
	// allow_batched; EnsureStreams adds it for CALLPIPE_CALLS only
	if CallsStreamConfig(DefaultStreamOptions()).AllowBatchPublish {
		t.Fatal("CallsStreamConfig sets AllowBatchPublish")
	}
}

func TestHasSettingsComparesWhatProvisioningSets(t *testing.T) {
	want := CallsStreamConfig(DefaultStreamOptions())
	want.AllowBatchPublish = true
	have := want
	// what the server fills in or adds is not provisioning's
	have.MaxMsgs, have.MaxMsgSize, have.MaxMsgsPerSubject = -1, -1, -1
	have.Metadata = map[string]string{"_nats.level": "1"}
	if !hasSettings(have, want) {
		t.Fatal("a stream with every setting (and the server's defaults) counts as different")
	}
	for name, change := range map[string]func(*jetstream.StreamConfig){
		"description":   func(c *jetstream.StreamConfig) { c.Description = "old" },
		"subjects":      func(c *jetstream.StreamConfig) { c.Subjects = []string{"other.>"} },
		"storage":       func(c *jetstream.StreamConfig) { c.Storage = jetstream.MemoryStorage },
		"retention":     func(c *jetstream.StreamConfig) { c.Retention = jetstream.WorkQueuePolicy },
		"discard":       func(c *jetstream.StreamConfig) { c.Discard = jetstream.DiscardNew },
		"max age":       func(c *jetstream.StreamConfig) { c.MaxAge = time.Hour },
		"max bytes":     func(c *jetstream.StreamConfig) { c.MaxBytes = 1 << 30 },
		"duplicates":    func(c *jetstream.StreamConfig) { c.Duplicates = time.Minute },
		"replicas":      func(c *jetstream.StreamConfig) { c.Replicas = 3 },
		"batch publish": func(c *jetstream.StreamConfig) { c.AllowBatchPublish = false },
	} {
		c := have
		change(&c)
		if hasSettings(c, want) {
			t.Errorf("a stream whose %s differs counts as provisioned", name)
		}
	}
}
