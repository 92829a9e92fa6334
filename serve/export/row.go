package export

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/callpipe/callpipe/store/callsdb"
)

// Row is one normalized call as exported: the Parquet schema (typed columns,
// millisecond UTC timestamps, nullable where ClickHouse is), the NDJSON
// object and the CSV columns, in this order.
type Row struct {
	ID             string     `parquet:"id" json:"id"`
	TraceID        string     `parquet:"trace_id" json:"trace_id"`
	SessionID      string     `parquet:"session_id" json:"session_id"`
	StartTime      time.Time  `parquet:"start_time,timestamp(millisecond)" json:"start_time"`
	EndTime        time.Time  `parquet:"end_time,timestamp(millisecond)" json:"end_time"`
	FirstTokenTime *time.Time `parquet:"first_token_time,optional,timestamp(millisecond)" json:"first_token_time"`
	LatencyMS      int64      `parquet:"latency_ms" json:"latency_ms"`
	TTFTMS         *int64     `parquet:"ttft_ms,optional" json:"ttft_ms"`
	Endpoint       string     `parquet:"endpoint" json:"endpoint"`
	Kind           string     `parquet:"kind" json:"kind"`
	Model          string     `parquet:"model" json:"model"`
	Instance       string     `parquet:"instance" json:"instance"`
	UserID         string     `parquet:"user_id" json:"user_id"`
	UserSource     string     `parquet:"user_source" json:"user_source"`
	APIKeyHash     string     `parquet:"api_key_hash" json:"api_key_hash"`
	APIKeyPrefix   string     `parquet:"api_key_prefix" json:"api_key_prefix"`
	Stream         bool       `parquet:"stream" json:"stream"`
	Status         int32      `parquet:"status" json:"status"`
	Error          string     `parquet:"error" json:"error"`
	FinishReason   string     `parquet:"finish_reason" json:"finish_reason"`
	InputText      string     `parquet:"input_text" json:"input_text"`
	OutputText     string     `parquet:"output_text" json:"output_text"`
	// Input, Output, ModelParameters and Metadata are JSON text ("" when absent).
	Input           string   `parquet:"input" json:"input"`
	Output          string   `parquet:"output" json:"output"`
	ModelParameters string   `parquet:"model_parameters" json:"model_parameters"`
	InputTokens     int64    `parquet:"input_tokens" json:"input_tokens"`
	OutputTokens    int64    `parquet:"output_tokens" json:"output_tokens"`
	TotalTokens     int64    `parquet:"total_tokens" json:"total_tokens"`
	UsageSource     string   `parquet:"usage_source" json:"usage_source"`
	CostUSD         *float64 `parquet:"cost_usd,optional" json:"cost_usd"`
	Metadata        string   `parquet:"metadata" json:"metadata"`
	Tags            []string `parquet:"tags,list" json:"tags"`
	Source          string   `parquet:"source" json:"source"`
	BatchID         string   `parquet:"batch_id" json:"batch_id"`
	// Truncated is set when the ClickHouse sink cut a text field (clickhouse.max_text_bytes).
	Truncated bool `parquet:"truncated" json:"truncated"`
	// Version is the stored copy's version (the newest copy of a call is exported).
	Version uint64 `parquet:"version" json:"version"`
	// CaptureMode and CaptureMaskSet are the capture policy that produced the
	// call's payload ("" for calls stored before it was recorded).
	CaptureMode    string `parquet:"capture_mode" json:"capture_mode"`
	CaptureMaskSet string `parquet:"capture_mask_set" json:"capture_mask_set"`
}

// RowColumns are the CSV header (and Parquet column names) of Row.
var RowColumns = []string{
	"id", "trace_id", "session_id", "start_time", "end_time", "first_token_time", "latency_ms", "ttft_ms",
	"endpoint", "kind", "model", "instance", "user_id", "user_source", "api_key_hash", "api_key_prefix",
	"stream", "status", "error", "finish_reason", "input_text", "output_text", "input", "output", "model_parameters",
	"input_tokens", "output_tokens", "total_tokens", "usage_source", "cost_usd", "metadata", "tags", "source", "batch_id",
	"truncated", "version", "capture_mode", "capture_mask_set",
}

// rowFromStored joins ClickHouse's second + millisecond columns back into
// timestamps.
func rowFromStored(s *callsdb.ExportRow) Row {
	at := func(t time.Time, ms uint16) time.Time { return t.UTC().Add(time.Duration(ms) * time.Millisecond) }
	r := Row{
		ID: s.ID, TraceID: s.TraceID, SessionID: s.SessionID,
		StartTime: at(s.StartTime, s.StartMS), EndTime: at(s.EndTime, s.EndMS),
		LatencyMS: s.LatencyMS, TTFTMS: s.TTFTMS,
		Endpoint: s.Endpoint, Kind: s.Kind, Model: s.Model, Instance: s.Instance,
		UserID: s.UserID, UserSource: s.UserSource, APIKeyHash: s.APIKeyHash, APIKeyPrefix: s.APIKeyPrefix,
		Stream: s.Stream != 0, Status: s.Status, Error: s.Error, FinishReason: s.FinishReason,
		InputText: s.InputText, OutputText: s.OutputText, Input: s.Input, Output: s.Output,
		ModelParameters: s.ModelParameters, InputTokens: s.InputTokens, OutputTokens: s.OutputTokens,
		TotalTokens: s.TotalTokens, UsageSource: s.UsageSource, CostUSD: s.CostUSD, Metadata: s.Metadata,
		Tags: s.Tags, Source: s.Source, BatchID: s.BatchID, Truncated: s.Truncated != 0, Version: s.Version,
		CaptureMode: s.CaptureMode, CaptureMaskSet: s.CaptureMaskSet,
	}
	if s.FirstTokenTime != nil {
		var ms uint16
		if s.FirstTokenMS != nil {
			ms = *s.FirstTokenMS
		}
		t := at(*s.FirstTokenTime, ms)
		r.FirstTokenTime = &t
	}
	if r.Tags == nil {
		r.Tags = []string{}
	}
	return r
}

// size estimates the row's uncompressed encoded size, for cutting parts.
func (r *Row) size() int {
	n := 400 + len(r.ID) + len(r.TraceID) + len(r.SessionID) + len(r.Endpoint) + len(r.Kind) + len(r.Model) +
		len(r.Instance) + len(r.UserID) + len(r.UserSource) + len(r.APIKeyHash) + len(r.APIKeyPrefix) + len(r.Error) +
		len(r.FinishReason) + len(r.InputText) + len(r.OutputText) + len(r.Input) + len(r.Output) +
		len(r.ModelParameters) + len(r.UsageSource) + len(r.Metadata) + len(r.Source) + len(r.BatchID) +
		len(r.CaptureMode) + len(r.CaptureMaskSet)
	for _, t := range r.Tags {
		n += len(t) + 3
	}
	return n
}

// TimeLayout is how CSV renders timestamps (UTC, milliseconds); NDJSON uses
// RFC 3339 with the same precision.
const TimeLayout = "2006-01-02T15:04:05.000Z"

func (r *Row) appendJSON(b []byte) ([]byte, error) {
	j, err := json.Marshal(r)
	if err != nil {
		return b, err
	}
	return append(b, j...), nil
}

func (r *Row) csvRecord(rec []string) []string {
	optTime := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(TimeLayout)
	}
	optInt := func(v *int64) string {
		if v == nil {
			return ""
		}
		return strconv.FormatInt(*v, 10)
	}
	cost := ""
	if r.CostUSD != nil {
		cost = strconv.FormatFloat(*r.CostUSD, 'g', -1, 64)
	}
	tags, _ := json.Marshal(r.Tags)
	return append(rec[:0],
		r.ID, r.TraceID, r.SessionID, r.StartTime.UTC().Format(TimeLayout), r.EndTime.UTC().Format(TimeLayout),
		optTime(r.FirstTokenTime), strconv.FormatInt(r.LatencyMS, 10), optInt(r.TTFTMS),
		r.Endpoint, r.Kind, r.Model, r.Instance, r.UserID, r.UserSource, r.APIKeyHash, r.APIKeyPrefix,
		strconv.FormatBool(r.Stream), strconv.FormatInt(int64(r.Status), 10), r.Error, r.FinishReason,
		r.InputText, r.OutputText, r.Input, r.Output, r.ModelParameters,
		strconv.FormatInt(r.InputTokens, 10), strconv.FormatInt(r.OutputTokens, 10), strconv.FormatInt(r.TotalTokens, 10),
		r.UsageSource, cost, r.Metadata, string(tags), r.Source, r.BatchID,
		strconv.FormatBool(r.Truncated), strconv.FormatUint(r.Version, 10), r.CaptureMode, r.CaptureMaskSet,
	)
}
