package langfuse

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// IngestionPath is Langfuse's batch ingestion endpoint.
const IngestionPath = "/api/public/ingestion"

// eventResult is Langfuse's answer for one event of a 207.
type eventResult struct {
	Status  int
	Message string
}

// ingestionResponse is what one POST /api/public/ingestion answered.
type ingestionResponse struct {
	Status     int
	RetryAfter time.Duration // from Retry-After on 429 and 503 (0 = none)
	Message    string        // message of a request-level error
	Results    map[string]eventResult
	// AllAccepted: a 2xx without per-event results (OTLP) accepts every item.
	AllAccepted bool
}

// ingestionTransport posts batches to /api/public/ingestion with Basic auth.
type ingestionTransport struct {
	url    string
	auth   string
	client *http.Client
}

func newIngestionTransport(host, publicKey, secretKey string, client *http.Client) *ingestionTransport {
	return &ingestionTransport{
		url:    strings.TrimRight(host, "/") + IngestionPath,
		auth:   basicAuth(publicKey, secretKey),
		client: client,
	}
}

func basicAuth(publicKey, secretKey string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(publicKey+":"+secretKey))
}

// post sends one encoded {"batch":[...]} body. An error is a transport
// failure (no HTTP answer).
func (t *ingestionTransport) post(ctx context.Context, body []byte) (ingestionResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return ingestionResponse{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", t.auth)
	req.Header.Set("User-Agent", "callpipe-langfuse-sink")
	resp, err := t.client.Do(req)
	if err != nil {
		return ingestionResponse{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return ingestionResponse{}, fmt.Errorf("read answer: %w", err)
	}
	r := ingestionResponse{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		var body struct {
			Successes []struct {
				ID     string `json:"id"`
				Status int    `json:"status"`
			} `json:"successes"`
			Errors []struct {
				ID      string          `json:"id"`
				Status  int             `json:"status"`
				Message string          `json:"message"`
				Error   json.RawMessage `json:"error"`
			} `json:"errors"`
		}
		if err := json.Unmarshal(data, &body); err != nil {
			// A 2xx we cannot read says nothing about any event: retry them all.
			r.Status = http.StatusBadGateway
			r.Message = fmt.Sprintf("unreadable %d answer: %v", resp.StatusCode, err)
			return r, nil
		}
		r.Results = make(map[string]eventResult, len(body.Successes)+len(body.Errors))
		for _, s := range body.Successes {
			r.Results[s.ID] = eventResult{Status: s.Status}
		}
		for _, e := range body.Errors {
			msg := e.Message
			if len(e.Error) > 0 && string(e.Error) != "null" {
				msg += ": " + errorText(e.Error)
			}
			r.Results[e.ID] = eventResult{Status: e.Status, Message: msg}
		}
		return r, nil
	}
	r.Message = requestMessage(data)
	return r, nil
}

func errorText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// requestMessage is the message of a request-level error body, or its start.
func requestMessage(data []byte) string {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &m) == nil && m.Message != "" {
		return m.Message
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// retryAfter parses a Retry-After header: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil && n >= 0 {
		return time.Duration(n * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
