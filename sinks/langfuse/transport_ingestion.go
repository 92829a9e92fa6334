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

	"github.com/valyala/fastjson"
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
	// AllAccepted: a 2xx without per-event results (OTLP) accepts every
	// item, except that Rejected > 0 (OTLP partial_success.rejected_spans,
	// with Message its error_message) says that many were not taken.
	AllAccepted bool
	Rejected    int64
	// tries counts resends of the same spans after a partial success.
	tries int
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
// failure (no HTTP answer). When body is in buf, buf is held until net/http
// closes the body (bodyBuf).
func (t *ingestionTransport) post(ctx context.Context, body []byte, buf *bodyBuf) (ingestionResponse, error) {
	var rd io.Reader = bytes.NewReader(body)
	if buf != nil {
		rd = buf.reader(body)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, rd)
	if err != nil {
		if buf != nil {
			buf.release()
		}
		return ingestionResponse{}, err
	}
	if buf != nil { // what NewRequest sets for a *bytes.Reader
		req.ContentLength = int64(len(body))
		req.GetBody = func() (io.ReadCloser, error) { return buf.reader(body), nil } // a resend holds buf too
	}
	req.Header.Set("Content-Type", "application/json")
	return exchange(t.client, req, t.auth, 64<<20, func(r *ingestionResponse, _ http.Header, data []byte) {
		results, err := parseResults(data)
		if err != nil {
			// A 2xx we cannot read says nothing about any event: retry them all.
			r.Message = fmt.Sprintf("unreadable %d answer: %v", r.Status, err)
			r.Status = http.StatusBadGateway
			return
		}
		r.Results = results
	})
}

// exchange sends req with the sink's credentials (auth) and reads at most
// limit bytes of the answer, the same way for both transports. An error is
// a transport failure: no HTTP answer, or one that could not be read. A 2xx
// answer's body is left to accepted, which reads it the transport's way;
// any other answer's body is the message.
func exchange(client *http.Client, req *http.Request, auth string, limit int64, accepted func(r *ingestionResponse, header http.Header, data []byte)) (ingestionResponse, error) {
	req.Header.Set("Authorization", auth)
	req.Header.Set("User-Agent", "callpipe-langfuse-sink")
	resp, err := client.Do(req)
	if err != nil {
		return ingestionResponse{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return ingestionResponse{}, fmt.Errorf("read answer: %w", err)
	}
	r := ingestionResponse{Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		accepted(&r, resp.Header, data)
	} else {
		r.Message = requestMessage(data)
	}
	return r, nil
}

var resultParsers fastjson.ParserPool

// parseResults reads a 207 body {"successes":[{id,status}],
// "errors":[{id,status,message,error}]} into results by envelope id.
func parseResults(data []byte) (map[string]eventResult, error) {
	p := resultParsers.Get()
	defer resultParsers.Put(p)
	v, err := p.ParseBytes(data)
	if err != nil {
		return nil, err
	}
	if v.Type() != fastjson.TypeObject {
		return nil, fmt.Errorf("answer is a JSON %s, not an object", v.Type())
	}
	succ, errs := v.GetArray("successes"), v.GetArray("errors")
	results := make(map[string]eventResult, len(succ)+len(errs))
	for _, e := range succ {
		results[string(e.GetStringBytes("id"))] = eventResult{Status: e.GetInt("status")}
	}
	for _, e := range errs {
		msg := string(e.GetStringBytes("message"))
		if ev := e.Get("error"); ev != nil && ev.Type() != fastjson.TypeNull {
			if ev.Type() == fastjson.TypeString {
				msg += ": " + string(ev.GetStringBytes())
			} else {
				msg += ": " + ev.String()
			}
		}
		results[string(e.GetStringBytes("id"))] = eventResult{Status: e.GetInt("status"), Message: msg}
	}
	return results, nil
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
