package rawarchive

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Flush reasons recorded with every object.
const (
	FlushSize     = "size"     // the buffer reached the size limit
	FlushAge      = "age"      // the buffer's oldest call waited the flush interval
	FlushShutdown = "shutdown" // the sink stopped (SIGTERM)
	FlushRecovery = "recovery" // rebuilt from the stream after a crash (keeps the manifest's reason)
)

// Meta describes one data object. It is stored as the object's user metadata
// and in its manifest.
type Meta struct {
	Stream   string    `json:"stream"`
	Hour     time.Time `json:"hour"`
	Count    int       `json:"count"`
	Bytes    int64     `json:"bytes"`  // uncompressed NDJSON
	SHA256   string    `json:"sha256"` // hex SHA-256 of the uncompressed NDJSON
	MinStart time.Time `json:"min_start"`
	MaxStart time.Time `json:"max_start"`
	FirstSeq uint64    `json:"first_seq"`
	LastSeq  uint64    `json:"last_seq"`
	Flush    string    `json:"flush"`
	Opened   time.Time `json:"opened"` // when the buffer took its first call
	Closed   time.Time `json:"closed"` // when it was closed
}

// Manifest is written next to a data object before the object is uploaded:
// it claims the object's stream sequences (see the package comment).
type Manifest struct {
	Version int    `json:"version"`
	Key     string `json:"key"` // the data object
	Meta
	// Seqs are the stream sequences of the lines in line order, as runs of
	// [first, length].
	Seqs [][2]uint64 `json:"seqs"`
}

// Contains reports whether seq is one of the manifest's lines.
func (m *Manifest) Contains(seq uint64) bool {
	for _, r := range m.Seqs {
		if seq >= r[0] && seq < r[0]+r[1] {
			return true
		}
	}
	return false
}

// Sequences returns the manifest's stream sequences in line order.
func (m *Manifest) Sequences() []uint64 {
	out := make([]uint64, 0, m.Count)
	for _, r := range m.Seqs {
		for i := range r[1] {
			out = append(out, r[0]+i)
		}
	}
	return out
}

const metaPrefix = "Callpipe-"

// userMetadata is Meta as S3 user metadata (x-amz-meta-callpipe-*).
func (m Meta) userMetadata() map[string]string {
	return map[string]string{
		metaPrefix + "Stream":    m.Stream,
		metaPrefix + "Count":     strconv.Itoa(m.Count),
		metaPrefix + "Bytes":     strconv.FormatInt(m.Bytes, 10),
		metaPrefix + "Sha256":    m.SHA256,
		metaPrefix + "Min-Start": m.MinStart.UTC().Format(time.RFC3339Nano),
		metaPrefix + "Max-Start": m.MaxStart.UTC().Format(time.RFC3339Nano),
		metaPrefix + "First-Seq": strconv.FormatUint(m.FirstSeq, 10),
		metaPrefix + "Last-Seq":  strconv.FormatUint(m.LastSeq, 10),
		metaPrefix + "Flush":     m.Flush,
		metaPrefix + "Opened":    m.Opened.UTC().Format(time.RFC3339Nano),
		metaPrefix + "Closed":    m.Closed.UTC().Format(time.RFC3339Nano),
	}
}

// parseUserMetadata reads Meta back from S3 user metadata (keys as minio-go
// returns them, without the x-amz-meta- prefix, any case).
func parseUserMetadata(h time.Time, md map[string]string) (Meta, error) {
	get := func(k string) string {
		for key, v := range md {
			if len(key) == len(metaPrefix)+len(k) && equalFold(key, metaPrefix+k) {
				return v
			}
		}
		return ""
	}
	m := Meta{Hour: h, Stream: get("Stream"), SHA256: get("Sha256"), Flush: get("Flush")}
	var errs []error
	num := func(k string, dst *uint64) {
		v, err := strconv.ParseUint(get(k), 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("metadata %s%s: %w", metaPrefix, k, err))
		}
		*dst = v
	}
	tm := func(k string, dst *time.Time) {
		v, err := time.Parse(time.RFC3339Nano, get(k))
		if err != nil {
			errs = append(errs, fmt.Errorf("metadata %s%s: %w", metaPrefix, k, err))
		}
		*dst = v
	}
	var count, size uint64
	num("Count", &count)
	num("Bytes", &size)
	num("First-Seq", &m.FirstSeq)
	num("Last-Seq", &m.LastSeq)
	tm("Min-Start", &m.MinStart)
	tm("Max-Start", &m.MaxStart)
	tm("Opened", &m.Opened)
	tm("Closed", &m.Closed)
	m.Count, m.Bytes = int(count), int64(size)
	return m, errors.Join(errs...)
}

func equalFold(a, b string) bool { return bytes.EqualFold([]byte(a), []byte(b)) }

// Compression levels of data objects.
var levels = map[string]zstd.EncoderLevel{
	"fastest": zstd.SpeedFastest, "default": zstd.SpeedDefault, "better": zstd.SpeedBetterCompression,
}

// ValidLevel reports whether name is a compression level Builder accepts.
func ValidLevel(name string) bool { _, ok := levels[name]; return ok }

// frameBytes is the raw size at which a builder hands its lines to a
// compressor. Each piece becomes one zstd frame and a data object is their
// concatenation (which every zstd reader reads as one stream), so that an
// object compresses on all cores while its next lines arrive. Pieces are cut
// at line boundaries by size only, so rebuilding an object from the same
// lines yields the same bytes.
const frameBytes = 4 << 20

var (
	encoders = map[string]*zstd.Encoder{} // level → encoder shared by every builder (EncodeAll is concurrent)
	encMu    sync.Mutex
	// compressing bounds the frames being compressed at once, across
	// builders: a builder that gets ahead waits instead of piling up raw pieces.
	compressing = make(chan struct{}, runtime.GOMAXPROCS(0))
	rawPieces   = sync.Pool{New: func() any { b := make([]byte, 0, frameBytes+64<<10); return &b }}
)

func encoder(level string) (*zstd.Encoder, error) {
	lv, ok := levels[level]
	if !ok {
		return nil, fmt.Errorf("archive: compression level %q: want fastest, default or better", level)
	}
	encMu.Lock()
	defer encMu.Unlock()
	if e := encoders[level]; e != nil {
		return e, nil
	}
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lv), zstd.WithEncoderConcurrency(cap(compressing)))
	if err != nil {
		return nil, fmt.Errorf("archive: zstd encoder: %w", err)
	}
	encoders[level] = e
	return e, nil
}

// frame is one compressed piece of an object; data is set when done closes.
type frame struct {
	done chan struct{}
	data []byte
}

// Builder accumulates the lines of one data object, compressing them in
// frameBytes pieces as they come.
type Builder struct {
	prefix string
	enc    *zstd.Encoder
	raw    *[]byte // the piece being filled
	frames []*frame
	sum    hash.Hash
	meta   Meta
	runs   [][2]uint64
}

// NewBuilder starts an object of hour h of stream under prefix, compressed at
// level (fastest, default or better).
func NewBuilder(prefix, stream, level string, h, opened time.Time) (*Builder, error) {
	enc, err := encoder(level)
	if err != nil {
		return nil, err
	}
	return &Builder{prefix: prefix, enc: enc, sum: sha256.New(),
		meta: Meta{Stream: stream, Hour: h.UTC().Truncate(time.Hour), Opened: opened.UTC()}}, nil
}

// Add appends one line (without its newline) stored at stream sequence seq;
// start is the call's start time (zero when the event could not be decoded).
func (b *Builder) Add(seq uint64, line []byte, start time.Time) error {
	if bytes.IndexByte(line, '\n') >= 0 {
		return errors.New("archive: a line must not contain a line break")
	}
	if b.raw == nil {
		b.raw = rawPieces.Get().(*[]byte)
	}
	piece := append(append(*b.raw, line...), '\n')
	*b.raw = piece
	b.sum.Write(piece[len(piece)-len(line)-1:])
	if len(piece) >= frameBytes {
		b.seal()
	}
	m := &b.meta
	if m.Count == 0 || seq < m.FirstSeq {
		m.FirstSeq = seq
	}
	if m.Count == 0 || seq > m.LastSeq {
		m.LastSeq = seq
	}
	if !start.IsZero() {
		if m.MinStart.IsZero() || start.Before(m.MinStart) {
			m.MinStart = start.UTC()
		}
		if m.MaxStart.IsZero() || start.After(m.MaxStart) {
			m.MaxStart = start.UTC()
		}
	}
	m.Count++
	m.Bytes += int64(len(line)) + 1
	if n := len(b.runs); n > 0 && b.runs[n-1][0]+b.runs[n-1][1] == seq {
		b.runs[n-1][1]++
	} else {
		b.runs = append(b.runs, [2]uint64{seq, 1})
	}
	return nil
}

// seal hands the filled piece to a compressor.
func (b *Builder) seal() {
	raw := b.raw
	b.raw = nil
	f := &frame{done: make(chan struct{})}
	b.frames = append(b.frames, f)
	compressing <- struct{}{}
	go func() {
		defer func() { <-compressing }()
		f.data = b.enc.EncodeAll(*raw, make([]byte, 0, len(*raw)/4))
		*raw = (*raw)[:0]
		rawPieces.Put(raw)
		close(f.done)
	}()
}

// Bytes is the uncompressed size so far.
func (b *Builder) Bytes() int64 { return b.meta.Bytes }

// Count is the number of lines so far.
func (b *Builder) Count() int { return b.meta.Count }

// Opened is when the object took its first line.
func (b *Builder) Opened() time.Time { return b.meta.Opened }

// Built is a finished object: its manifest and compressed bytes.
type Built struct {
	Manifest    Manifest
	ManifestKey string
	Data        []byte
}

// Finish closes the object; flush is the reason (FlushSize, FlushAge, ...).
// The builder must not be used afterwards.
func (b *Builder) Finish(flush string, closed time.Time) (*Built, error) {
	if b.meta.Count == 0 {
		return nil, errors.New("archive: empty object")
	}
	if b.raw != nil {
		b.seal()
	}
	size := 0
	for _, f := range b.frames {
		<-f.done
		size += len(f.data)
	}
	data := make([]byte, 0, size)
	for _, f := range b.frames {
		data = append(data, f.data...)
	}
	b.frames = nil
	m := b.meta
	m.Flush, m.Closed = flush, closed.UTC()
	m.SHA256 = hex.EncodeToString(b.sum.Sum(nil))
	return &Built{
		Manifest:    Manifest{Version: 1, Key: DataKey(b.prefix, m.Hour, m.FirstSeq, m.LastSeq), Meta: m, Seqs: b.runs},
		ManifestKey: ManifestKey(b.prefix, m.Hour, m.FirstSeq, m.LastSeq),
		Data:        data,
	}, nil
}

func (m *Manifest) encode() ([]byte, error) { return json.Marshal(m) }

// StorableLine returns data as one NDJSON line: as it is, or compacted when
// it is JSON spread over several lines (only whitespace changes). Non-JSON
// with a line break cannot be a line.
func StorableLine(data []byte) ([]byte, error) {
	if bytes.IndexByte(data, '\n') < 0 {
		return data, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		return nil, fmt.Errorf("not JSON and contains a line break, so it cannot be stored as one NDJSON line: %w", err)
	}
	return buf.Bytes(), nil
}
