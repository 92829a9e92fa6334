package schema

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits of single fields.
const (
	MaxIDChars           = 128 // id and trace_id, in characters (code points)
	MaxNameChars         = 256 // model, instance, user, session_id, batch_id
	MaxEndpointChars     = 2048
	MaxTags              = 64
	MaxTagChars          = 200
	APIKeyPrefixChars    = 7  // api_key_prefix, in characters
	MaxMaskSetChars      = 64 // capture.mask_set
	DefaultStatus        = 200
	apiKeyHashHexLength  = 64
	exampleEndpoint      = "/v1/chat/completions"
	endpointRequirements = "must be a request path like " + exampleEndpoint
)

// ClipChars is s cut to its first n characters (code points), the unit of
// the limits above.
func ClipChars(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

// ApplyDefaults fills the fields that have defaults: TraceID = ID,
// Status = 200, Source = "online". Decode calls it.
func (e *Event) ApplyDefaults() {
	if e.TraceID == "" {
		e.TraceID = e.ID
	}
	if e.Status == 0 {
		e.Status = DefaultStatus
	}
	if e.Source == "" {
		e.Source = SourceOnline
	}
}

// Validate checks e against schema v1, for Go producers that build Events
// directly. It returns nil or a ValidationError listing every problem in
// schema order.
//
// Zero values mean absent, as they do when e is marshalled (omitempty), so a
// zero Status or an empty Source or TraceID is valid: those take their
// defaults (see ApplyDefaults). Beyond what Decode guarantees by
// construction, Validate also checks that strings are valid UTF-8, that
// Request, Response and Metadata values are valid JSON, and that times can
// be encoded as RFC 3339 (year 0000-9999, offset in whole minutes).
//
// Rules: id is required, 1-128 characters; trace_id at most 128 characters;
// start_time is required; end_time is not before start_time;
// first_token_time is between start_time and end_time; endpoint is required
// and is a request path (see the JSON Schema); model is required;
// api_key_hash is 64 lowercase hex digits; api_key_prefix is at most 7
// characters; status is 100-599; usage counts are non-negative; source is
// "online" or "batch"; batch_id is allowed only with source "batch".
func (e *Event) Validate() error {
	var errs errList
	e.check(&errs, false)
	return errs.err()
}

// check adds e's problems to errs, skipping fields that already failed.
// trusted is set by Decode, whose output is valid UTF-8 and valid JSON by
// construction.
func (e *Event) check(errs *errList, trusted bool) {
	add := func(f int, reason string) {
		if !errs.failed(f) {
			errs.add(f, fieldNames[f], reason)
		}
	}
	if !trusted {
		strs := [...]struct {
			f int
			s string
		}{
			{fID, e.ID}, {fTraceID, e.TraceID}, {fSessionID, e.SessionID},
			{fEndpoint, e.Endpoint}, {fModel, e.Model}, {fInstance, e.Instance},
			{fUser, e.User}, {fAPIKey, e.APIKey}, {fAPIKeyHash, e.APIKeyHash},
			{fAPIKeyPrefix, e.APIKeyPrefix}, {fError, e.Error}, {fSource, e.Source},
			{fBatchID, e.BatchID},
		}
		for _, x := range strs {
			if !utf8.ValidString(x.s) {
				add(x.f, "invalid UTF-8")
			}
		}
		for i, t := range e.Tags {
			if !utf8.ValidString(t) {
				errs.add(fTags, "tags["+strconv.Itoa(i)+"]", "invalid UTF-8")
			}
		}
		if len(e.Request) > 0 && !json.Valid(e.Request) {
			add(fRequest, "must be valid JSON")
		}
		if len(e.Response) > 0 && !json.Valid(e.Response) {
			add(fResponse, "must be valid JSON")
		}
		for _, k := range sortedKeys(e.Metadata) {
			switch {
			case !utf8.ValidString(k):
				errs.add(fMetadata, "metadata."+truncField(k), "key is not valid UTF-8")
			case !json.Valid(e.Metadata[k]):
				errs.add(fMetadata, "metadata."+truncField(k), "must be valid JSON")
			}
		}
		if r := checkTime(e.StartTime); r != "" && !e.StartTime.IsZero() {
			add(fStartTime, r)
		}
		if e.EndTime != nil {
			if r := checkTime(*e.EndTime); r != "" {
				add(fEndTime, r)
			}
		}
		if e.FirstTokenTime != nil {
			if r := checkTime(*e.FirstTokenTime); r != "" {
				add(fFirstTokenTime, r)
			}
		}
	}

	if e.ID == "" {
		add(fID, "required")
	} else if n := utf8.RuneCountInString(e.ID); n > MaxIDChars {
		add(fID, strconv.Itoa(n)+" characters, limit "+strconv.Itoa(MaxIDChars))
	}
	// A trace_id defaulted from a too-long id is the id's error, not its own.
	if n := utf8.RuneCountInString(e.TraceID); n > MaxIDChars && e.TraceID != e.ID {
		add(fTraceID, strconv.Itoa(n)+" characters, limit "+strconv.Itoa(MaxIDChars))
	}

	startOK := !e.StartTime.IsZero() && !errs.failed(fStartTime)
	if e.StartTime.IsZero() {
		add(fStartTime, "required")
	}
	endOK := e.EndTime != nil && !errs.failed(fEndTime)
	if endOK && startOK && e.EndTime.Before(e.StartTime) {
		add(fEndTime, "before start_time")
	}
	if e.FirstTokenTime != nil && !errs.failed(fFirstTokenTime) {
		switch {
		case startOK && e.FirstTokenTime.Before(e.StartTime):
			add(fFirstTokenTime, "before start_time")
		case endOK && e.FirstTokenTime.After(*e.EndTime):
			add(fFirstTokenTime, "after end_time")
		}
	}

	if r := checkEndpoint(e.Endpoint); r != "" {
		add(fEndpoint, r)
	} else if n := utf8.RuneCountInString(e.Endpoint); n > MaxEndpointChars {
		add(fEndpoint, strconv.Itoa(n)+" characters, limit "+strconv.Itoa(MaxEndpointChars))
	}
	// Names become ClickHouse keys and Langfuse filters: a bounded length
	// keeps a broken client from blowing up every rollup row.
	for _, f := range []struct {
		id int
		v  string
	}{{fModel, e.Model}, {fInstance, e.Instance}, {fUser, e.User}, {fSessionID, e.SessionID}, {fBatchID, e.BatchID}} {
		if n := utf8.RuneCountInString(f.v); n > MaxNameChars {
			add(f.id, strconv.Itoa(n)+" characters, limit "+strconv.Itoa(MaxNameChars))
		}
	}
	if len(e.Tags) > MaxTags {
		add(fTags, strconv.Itoa(len(e.Tags))+" tags, limit "+strconv.Itoa(MaxTags))
	}
	for i, tag := range e.Tags {
		if n := utf8.RuneCountInString(tag); n > MaxTagChars {
			errs.add(fTags, "tags["+strconv.Itoa(i)+"]", strconv.Itoa(n)+" characters, limit "+strconv.Itoa(MaxTagChars))
		}
	}
	if e.Model == "" {
		add(fModel, "required")
	}
	if e.APIKeyHash != "" && !isSHA256Hex(e.APIKeyHash) {
		add(fAPIKeyHash, "must be 64 lowercase hex digits (SHA-256), got "+quoteTrunc(e.APIKeyHash))
	}
	if n := utf8.RuneCountInString(e.APIKeyPrefix); n > APIKeyPrefixChars {
		add(fAPIKeyPrefix, strconv.Itoa(n)+" characters, limit "+strconv.Itoa(APIKeyPrefixChars))
	}
	if e.Status != 0 && (e.Status < 100 || e.Status > 599) {
		add(fStatus, "must be an integer between 100 and 599, got "+strconv.Itoa(e.Status))
	}
	if u := e.Usage; u != nil && !errs.failed(fUsage) {
		for i, p := range [3]*int64{u.PromptTokens, u.CompletionTokens, u.TotalTokens} {
			if p != nil && *p < 0 {
				errs.add(fUsage, usageNames[i], "must be a non-negative integer, got "+strconv.FormatInt(*p, 10))
			}
		}
	}
	switch e.Source {
	case "", SourceOnline, SourceBatch:
	default:
		add(fSource, `must be "online" or "batch", got `+quoteTrunc(e.Source))
	}
	if e.BatchID != "" && e.Source != SourceBatch && !errs.failed(fSource) {
		add(fBatchID, `allowed only when source is "batch"`)
	}
	if c := e.Capture; c != nil && !errs.failed(fCapture) {
		switch c.Mode {
		case CaptureFull, CaptureTruncated, CaptureNone:
		case "":
			errs.add(fCapture, "capture.mode", "required")
		default:
			errs.add(fCapture, "capture.mode", `must be "full", "truncated" or "none", got `+quoteTrunc(c.Mode))
		}
		if !utf8.ValidString(c.MaskSet) {
			errs.add(fCapture, "capture.mask_set", "invalid UTF-8")
		} else if n := utf8.RuneCountInString(c.MaskSet); n > MaxMaskSetChars {
			errs.add(fCapture, "capture.mask_set", strconv.Itoa(n)+" characters, limit "+strconv.Itoa(MaxMaskSetChars))
		}
	}
}

// checkEndpoint returns why s is not an acceptable endpoint, or "".
//
// An endpoint is the path of the request as the client sent it to the model
// server, e.g. /v1/chat/completions: it starts with "/" (but not "//",
// which would be a host), and has no query string, no fragment, and no
// whitespace or control characters. The JSON Schema pattern is the same
// rule; keep them in step (see endpointForbidden).
func checkEndpoint(s string) string {
	switch {
	case s == "":
		return "required"
	case strings.HasPrefix(s, "//") || (s[0] != '/' && strings.Contains(s, "://")):
		return endpointRequirements + " without scheme or host, got " + quoteTrunc(s)
	case s[0] != '/':
		return `must start with "/" (` + endpointRequirements + "), got " + quoteTrunc(s)
	}
	for _, r := range s {
		if endpointForbidden(r) {
			switch r {
			case '?':
				return endpointRequirements + " without a query string, got " + quoteTrunc(s)
			case '#':
				return endpointRequirements + " without a fragment, got " + quoteTrunc(s)
			}
			return endpointRequirements + " without whitespace or control characters, got " + quoteTrunc(s)
		}
	}
	return ""
}

// endpointForbidden lists the characters an endpoint may not contain: '?'
// and '#', C0 and C1 controls, space, DEL, and the characters ECMAScript's
// \s matches (so that the schema pattern means the same in every regex
// dialect): U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F,
// U+3000, U+FEFF.
func endpointForbidden(r rune) bool {
	switch {
	case r <= 0x20, r >= 0x7f && r <= 0xa0, r == '?', r == '#':
		return true
	case r == 0x1680, r >= 0x2000 && r <= 0x200a, r == 0x2028, r == 0x2029,
		r == 0x202f, r == 0x205f, r == 0x3000, r == 0xfeff:
		return true
	}
	return false
}

func isSHA256Hex(s string) bool {
	if len(s) != apiKeyHashHexLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]json.RawMessage) []string {
	return slices.Sorted(maps.Keys(m))
}
