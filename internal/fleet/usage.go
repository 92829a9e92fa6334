package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"
)

// UsageAnswer is the part of GET /api/v1/usage that demo and bench read.
type UsageAnswer struct {
	Rows   []map[string]any `json:"rows"`
	Totals UsageNumbers     `json:"totals"`
}

// UsageNumbers are the totals of a usage answer.
type UsageNumbers struct {
	Calls        int64   `json:"calls"`
	Errors       int64   `json:"errors"`
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	TotalTokens  int64   `json:"total_tokens"`
	CostUSD      float64 `json:"cost_usd"`
}

// GetUsage asks the usage API of the serve role on serveAddr (host:port) for
// [from, to), grouped by groupBy ("" for totals only).
func GetUsage(ctx context.Context, serveAddr string, from, to time.Time, groupBy string) (*UsageAnswer, error) {
	q := url.Values{"from": {from.UTC().Format(time.RFC3339)}, "to": {to.UTC().Format(time.RFC3339)}}
	if groupBy != "" {
		q.Set("group_by", groupBy)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+serveAddr+"/api/v1/usage?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("usage API: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("usage API: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var ans UsageAnswer
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("usage API answer: %w", err)
	}
	return &ans, nil
}

// WriteJSON writes v, indented, to path: the result files of demo and bench.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
