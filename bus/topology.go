package bus

import (
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// The streams and their subjects. Each stream owns every subject under its
// prefix (prefix.>); a stage may filter a narrower subject under it.
const (
	// CallsStream holds every accepted raw call event, as received (API key
	// hashed), with Nats-Msg-Id = event id.
	CallsStream        = "CALLPIPE_CALLS"
	CallsSubjectPrefix = "callpipe.calls"
	// ReplaySubjectPrefix is where replay jobs publish (…replay.<job>).
	ReplaySubjectPrefix = CallsSubjectPrefix + ".replay"

	// NormalizedStream holds the schema.Call of every call, one per message
	// or many (batch.go), on NormalizedSubjectPrefix.<kind>.
	NormalizedStream        = "CALLPIPE_NORMALIZED"
	NormalizedSubjectPrefix = "callpipe.normalized"

	// DeadLetterStream holds what a stage gave up on, on
	// DeadLetterSubjectPrefix.<stage>, in the format of deadletter.go.
	DeadLetterStream        = "CALLPIPE_DLQ"
	DeadLetterSubjectPrefix = "callpipe.dlq"
)

// Headers.
const (
	// HeaderMsgID is JetStream's deduplication id (Nats-Msg-Id).
	HeaderMsgID = jetstream.MsgIDHeader

	// HeaderSchema is the event schema version of a raw call event.
	HeaderSchema = "Callpipe-Schema"

	// HeaderCalls is the number of calls of a batched message (batch.go).
	HeaderCalls = "Callpipe-Calls"

	// Replay routing (route.go).
	HeaderReplay = "Callpipe-Replay"
	HeaderSinks  = "Callpipe-Sinks"

	// Dead letters (deadletter.go).
	HeaderError         = "Callpipe-Error"
	HeaderStage         = "Callpipe-Stage"
	HeaderSourceStream  = "Callpipe-Source-Stream"
	HeaderSourceSubject = "Callpipe-Source-Subject"
	HeaderSourceSeq     = "Callpipe-Source-Seq"
	HeaderAttempts      = "Callpipe-Attempts"
	HeaderFirstFailure  = "Callpipe-First-Failure"
	// headerDeliveriesV0 is what dead letters written before HeaderAttempts
	// carried instead (normalize and langfuse only); read, never written.
	headerDeliveriesV0 = "Callpipe-Deliveries"
)

// Stage names: the --stages of `callpipe worker`, the Callpipe-Stage of
// dead letters and the names Callpipe-Sinks lists.
const (
	StageNormalize  = "normalize"
	StageArchive    = "archive"
	StageClickHouse = "clickhouse"
	StageLangfuse   = "langfuse"
)

// Stage is one row of the topology: a stage, the stream it reads through its
// durable consumer and the stream it feeds (none for a sink).
type Stage struct {
	Name     string
	Reads    string // stream
	Subject  string // default filter subject on Reads
	Feeds    string // stream written, "" for a sink
	Consumer string // default durable consumer name
	// OnlyNamedReplays: a replayed message reaches the stage only when its
	// Callpipe-Sinks names it (the archive keeps what was received once; a
	// replay of archived calls must not be archived again).
	OnlyNamedReplays bool
}

// Defaults sets an empty stream, durable consumer name or filter subject
// of a stage's configuration to the topology's; a nil one is left alone.
func (s Stage) Defaults(stream, consumer, subject *string) {
	for _, f := range [3]struct {
		dst *string
		v   string
	}{{stream, s.Reads}, {consumer, s.Consumer}, {subject, s.Subject}} {
		if f.dst != nil && *f.dst == "" {
			*f.dst = f.v
		}
	}
}

// Stages is the pipeline, in flow order.
var Stages = []Stage{
	{Name: StageNormalize, Reads: CallsStream, Subject: CallsSubjectPrefix + ".>", Feeds: NormalizedStream, Consumer: "callpipe-normalize"},
	{Name: StageArchive, Reads: CallsStream, Subject: CallsSubjectPrefix + ".>", Consumer: "callpipe-archive", OnlyNamedReplays: true},
	{Name: StageClickHouse, Reads: NormalizedStream, Subject: NormalizedSubjectPrefix + ".>", Consumer: "callpipe-clickhouse"},
	{Name: StageLangfuse, Reads: NormalizedStream, Subject: NormalizedSubjectPrefix + ".>", Consumer: "callpipe-langfuse"},
}

// Streams are the pipeline's streams, in flow order.
var Streams = []string{CallsStream, NormalizedStream, DeadLetterStream}

// StageOf returns the stage named name. It panics on a name not in Stages:
// stage names are constants of this package.
func StageOf(name string) Stage {
	s, ok := lookupStage(name)
	if !ok {
		panic("bus: unknown stage " + name)
	}
	return s
}

// lookupStage finds a stage by a name read from outside (a header).
func lookupStage(name string) (Stage, bool) {
	for _, s := range Stages {
		if s.Name == name {
			return s, true
		}
	}
	return Stage{}, false
}

// SubjectPrefix is the subject prefix of a stream of this package.
func SubjectPrefix(stream string) string {
	switch stream {
	case CallsStream:
		return CallsSubjectPrefix
	case NormalizedStream:
		return NormalizedSubjectPrefix
	case DeadLetterStream:
		return DeadLetterSubjectPrefix
	}
	panic("bus: unknown stream " + stream)
}

// ValidSubject reports (as an error) whether subject is a filter under stream's
// prefix, as a stage's configured subject must be.
func ValidSubject(stream, subject string) error {
	prefix := SubjectPrefix(stream) + "."
	if !strings.HasPrefix(subject, prefix) || strings.ContainsAny(subject, " \t") {
		return fmt.Errorf("must be a subject under %s", prefix)
	}
	return nil
}

// Consumer is one durable consumer of a stream.
type Consumer struct {
	Stage, Stream, Name string
}

// ConsumerOf is the durable consumer of stage, named name; "" is the
// stage's default name. Metrics and doctor must use the name the stage
// runs under, so they take it from here with the configured name.
func ConsumerOf(stage, name string) Consumer {
	s := StageOf(stage)
	if name == "" {
		name = s.Consumer
	}
	return Consumer{Stage: s.Name, Stream: s.Reads, Name: name}
}

// Readers lists the stages that read stream (replay's --sinks may name
// those of NormalizedStream).
func Readers(stream string) []string {
	var out []string
	for _, s := range Stages {
		if s.Reads == stream {
			out = append(out, s.Name)
		}
	}
	return out
}
