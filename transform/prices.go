package transform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"regexp"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
)

// ModelPrice is one row of a price table in the shape of Langfuse's model
// definitions: a regular expression over the model name and USD per token.
// A row without prices matches its models and prices them at nothing known
// (no cost, not zero), which keeps a broader row below it from pricing them.
type ModelPrice struct {
	ModelName    string   `json:"modelName"`
	MatchPattern string   `json:"matchPattern"`          // RE2 over the model name; Langfuse writes (?i)^(name)$
	InputPrice   *float64 `json:"inputPrice"`            // USD per input token
	OutputPrice  *float64 `json:"outputPrice"`           // USD per output token
	Unit         string   `json:"unit"`                  // TOKENS, the only unit callpipe prices
	TokenizerID  string   `json:"tokenizerId,omitempty"` // as in Langfuse; callpipe does not use it
}

// PriceFile is a price table as `callpipe prices` reads and prints it.
type PriceFile struct {
	Models []ModelPrice `json:"models"`
}

// DefaultPriceFile is the built-in table `callpipe prices print` starts
// from: the model families Xinference serves most, without prices, since
// what a self-hosted token costs is the operator's to say. Fill in the
// prices and load it with `callpipe prices set`.
func DefaultPriceFile() PriceFile {
	row := func(name, pattern string) ModelPrice {
		return ModelPrice{ModelName: name, MatchPattern: pattern, Unit: "TOKENS"}
	}
	return PriceFile{Models: []ModelPrice{
		row("qwen2.5-instruct", `(?i)^qwen2\.5-(\d+b-)?instruct`),
		row("qwen3", `(?i)^qwen3`),
		row("llama-3.1-instruct", `(?i)^llama-3\.1-(\d+b-)?instruct`),
		row("deepseek-r1-distill", `(?i)^deepseek-r1-distill`),
		row("glm4-chat", `(?i)^glm-?4`),
		row("bge-m3", `(?i)^bge-m3$`),
		row("bge-reranker", `(?i)^bge-reranker`),
	}}
}

// Compile checks every row and returns the table they make, in their order.
// Errors name the row and field, e.g. "models[2].matchPattern: ...".
func (f PriceFile) Compile() (PriceTable, error) {
	var pt PriceTable
	var errs []error
	for i, m := range f.Models {
		field := func(name, format string, args ...any) {
			errs = append(errs, fmt.Errorf("models[%d].%s: "+format, append([]any{i, name}, args...)...))
		}
		if m.ModelName == "" {
			field("modelName", "required")
		}
		re, err := regexp.Compile(m.MatchPattern)
		switch {
		case m.MatchPattern == "":
			field("matchPattern", "required")
		case err != nil:
			field("matchPattern", "not a regular expression: %v", err)
		}
		if m.Unit != "" && m.Unit != "TOKENS" {
			field("unit", "%q: callpipe prices TOKENS only", m.Unit)
		}
		for _, p := range []struct {
			name string
			v    *float64
		}{{"inputPrice", m.InputPrice}, {"outputPrice", m.OutputPrice}} {
			if p.v != nil && (*p.v < 0 || math.IsNaN(*p.v) || math.IsInf(*p.v, 0)) {
				field(p.name, "%v: must be a non-negative number (USD per token)", *p.v)
			}
		}
		if err != nil || m.MatchPattern == "" {
			continue
		}
		row := Price{Pattern: m.ModelName, re: re, unpriced: m.InputPrice == nil && m.OutputPrice == nil}
		if m.InputPrice != nil {
			row.InputPerMTok = *m.InputPrice * 1e6
		}
		if m.OutputPrice != nil {
			row.OutputPerMTok = *m.OutputPrice * 1e6
		}
		pt = append(pt, row)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return pt, nil
}

// LivePrices is the price table the normalize stage prices calls with: the
// rows stored in NATS KV (`callpipe prices set`) first, then the configured
// ones (transform.prices). Set swaps the stored rows while calls are being
// normalized; each call reads the table once.
type LivePrices struct {
	configured PriceTable
	cur        atomic.Pointer[PriceTable]
}

// NewLivePrices starts with the configured rows only.
func NewLivePrices(configured PriceTable) *LivePrices {
	l := &LivePrices{configured: configured}
	l.Set(nil)
	return l
}

// Set makes stored (then the configured rows) the table from the next call on.
func (l *LivePrices) Set(stored PriceTable) {
	t := append(append(PriceTable{}, stored...), l.configured...)
	l.cur.Store(&t)
}

// Table is the table in effect.
func (l *LivePrices) Table() PriceTable { return *l.cur.Load() }

// Where `callpipe prices set` stores its table.
const (
	PricesBucket = "callpipe_prices"
	PricesKey    = "table"
)

// OpenPrices opens the prices bucket, creating it when missing.
func OpenPrices(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: PricesBucket, Description: "callpipe model prices (callpipe prices set)", History: 10,
		Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("prices bucket %s: %w", PricesBucket, err)
	}
	return kv, nil
}

// PutPrices checks f and stores it as the table in effect.
func PutPrices(ctx context.Context, kv jetstream.KeyValue, f PriceFile) error {
	if _, err := f.Compile(); err != nil {
		return err
	}
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("prices: %w", err)
	}
	if _, err := kv.Put(ctx, PricesKey, b); err != nil {
		return fmt.Errorf("prices put %s: %w", PricesKey, err)
	}
	return nil
}

// GetPrices returns the stored table; ok is false when none is stored.
func GetPrices(ctx context.Context, kv jetstream.KeyValue) (f PriceFile, ok bool, err error) {
	e, err := kv.Get(ctx, PricesKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return PriceFile{}, false, nil
	}
	if err != nil {
		return PriceFile{}, false, fmt.Errorf("prices get %s: %w", PricesKey, err)
	}
	if err := json.Unmarshal(e.Value(), &f); err != nil {
		return PriceFile{}, false, fmt.Errorf("prices %s: stored value is not valid: %w", PricesKey, err)
	}
	return f, true, nil
}

// WatchPrices keeps live at the stored table until ctx ends: now, and after
// every `callpipe prices set` or `delete`. A stored table that does not
// compile (written around the command) is logged and leaves the table as it was.
func WatchPrices(ctx context.Context, kv jetstream.KeyValue, live *LivePrices, log *slog.Logger) error {
	err := bus.WatchKey(ctx, kv, PricesKey, func(e jetstream.KeyValueEntry) {
		if e == nil { // the initial values have been delivered
			return
		}
		if e.Operation() != jetstream.KeyValuePut {
			live.Set(nil)
			log.Info("prices: stored table removed; configured prices only")
			return
		}
		var f PriceFile
		if err := json.Unmarshal(e.Value(), &f); err != nil {
			log.Error("prices: stored table is not valid JSON; prices unchanged", "revision", e.Revision(), "err", err)
			return
		}
		t, err := f.Compile()
		if err != nil {
			log.Error("prices: stored table is not valid; prices unchanged", "revision", e.Revision(), "err", err)
			return
		}
		live.Set(t)
		log.Info("prices: stored table in effect", "revision", e.Revision(), "models", len(f.Models))
	})
	if err != nil {
		return fmt.Errorf("prices: %w", err)
	}
	return nil
}

// PricesInEffect is the table normalize stages price calls with now: the
// one stored in kv, else configured.
func PricesInEffect(ctx context.Context, kv jetstream.KeyValue, configured PriceTable) (PriceTable, error) {
	live := NewLivePrices(configured)
	stored, ok, err := GetPrices(ctx, kv)
	if err != nil {
		return nil, err
	}
	if ok {
		st, err := stored.Compile()
		if err != nil {
			return nil, fmt.Errorf("stored prices: %w", err)
		}
		live.Set(st)
	}
	return live.Table(), nil
}

// ReadPriceFile reads a price table as `callpipe prices set` takes it: the
// JSON of PriceFile, no unknown fields, every pattern and price valid.
func ReadPriceFile(r io.Reader) (PriceFile, error) {
	var f PriceFile
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return f, fmt.Errorf("not a price table (%v); see `callpipe prices print`", err)
	}
	if _, err := f.Compile(); err != nil {
		return f, err
	}
	return f, nil
}
