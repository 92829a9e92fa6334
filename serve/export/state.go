package export

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Job states.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateFailed    = "failed"
	StateSucceeded = "succeeded"
)

// Part is one object of an export.
type Part struct {
	Key    string `json:"key"`
	Rows   int64  `json:"rows"`
	Bytes  int64  `json:"bytes"`  // object size
	SHA256 string `json:"sha256"` // of the object's bytes, hex
	ETag   string `json:"etag,omitempty"`
	// After is the source position just before the part's first row and
	// Last the position of its last row (opaque to everything but the source).
	After string `json:"after"`
	Last  string `json:"last"`
}

// Progress is how far a job got.
type Progress struct {
	Rows          int64     `json:"rows"`
	Bytes         int64     `json:"bytes"` // stored bytes of committed parts
	Parts         int       `json:"parts"`
	EstimatedRows int64     `json:"estimated_rows,omitempty"` // upper bound from the source, 0 when unknown
	RowsPerSecond float64   `json:"rows_per_second"`
	BytesPerSec   float64   `json:"bytes_per_second"`
	StartedAt     time.Time `json:"started_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// State is a job as stored in Redis (<prefix>job:<id>): its spec, where it
// is, its committed parts (the checkpoint) and, once done, its manifest.
type State struct {
	ID       string    `json:"id"`
	Spec     Spec      `json:"spec"`
	State    string    `json:"state"`
	Owner    string    `json:"owner,omitempty"`
	Fence    int64     `json:"fence,omitempty"`
	Attempts int       `json:"attempts"`
	Progress Progress  `json:"progress"`
	Parts    []Part    `json:"parts,omitempty"`
	Error    string    `json:"error,omitempty"`
	Skipped  int64     `json:"skipped,omitempty"`
	Manifest *Manifest `json:"manifest,omitempty"`
	// Query is the source's description of what it reads (SQL for calls).
	Query string `json:"query,omitempty"`
}

// cursor is where the next part starts: after the last committed row.
func (s *State) cursor() string {
	if len(s.Parts) == 0 {
		return ""
	}
	return s.Parts[len(s.Parts)-1].Last
}

func stateKey(prefix, job string) string { return prefix + "job:" + job }

// LoadState reads a job's state; nil when Redis has none.
func LoadState(ctx context.Context, rdb redis.UniversalClient, prefix, job string) (*State, error) {
	b, err := rdb.Get(ctx, stateKey(prefix, job)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("export state %s: redis GET: %w", job, err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("export state %s: %w", job, err)
	}
	return &s, nil
}

// queueState records a new job as queued unless Redis already knows it; it
// returns the state Redis holds afterwards.
func queueState(ctx context.Context, rdb redis.UniversalClient, prefix string, spec Spec, ttl time.Duration) (*State, error) {
	s := &State{ID: spec.JobID, Spec: spec, State: StateQueued, Progress: Progress{UpdatedAt: time.Now().UTC()}}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	ok, err := rdb.SetNX(ctx, stateKey(prefix, spec.JobID), b, ttl).Result()
	if err != nil {
		return nil, fmt.Errorf("export state %s: redis SET NX: %w", spec.JobID, err)
	}
	if ok {
		return s, nil
	}
	return LoadState(ctx, rdb, prefix, spec.JobID)
}

// save writes the state under the lease (fenced).
func (s *State) save(ctx context.Context, l *Lease, prefix string, ttl time.Duration) error {
	s.Progress.UpdatedAt = time.Now().UTC()
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return l.set(ctx, stateKey(prefix, s.ID), b, ttl)
}
