package langfusetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// rawBody is an event body with its values left as JSON (input and output
// are never decoded on the request path).
type rawBody map[string]json.RawMessage

// envelope is a validated ingestion event.
type envelope struct {
	ID        string
	Type      string
	Timestamp time.Time
	BodyID    string
	Body      rawBody
}

// Event types of types.ts eventTypes.
var eventTypes = map[string]bool{
	"trace-create": true, "score-create": true, "event-create": true, "span-create": true, "span-update": true,
	"generation-create": true, "generation-update": true, "agent-create": true, "tool-create": true,
	"chain-create": true, "retriever-create": true, "evaluator-create": true, "embedding-create": true,
	"guardrail-create": true, "sdk-log": true, "dataset-run-item-create": true,
	"observation-create": true, "observation-update": true,
}

// z.iso.datetime({offset: true}): date, T, hh:mm[:ss[.fff]], then Z or ±hh:mm.
var isoDatetime = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$`)

func parseISO(s string) (time.Time, bool) {
	if !isoDatetime.MatchString(s) {
		return time.Time{}, false
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04Z07:00", "2006-01-02T15:04:05.999999999Z0700", "2006-01-02T15:04Z0700"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

func isNull(v json.RawMessage) bool { return len(v) == 0 || string(v) == "null" }

// str decodes a JSON string value.
func str(v json.RawMessage) (string, bool) {
	if len(v) == 0 || v[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return string(v[1 : len(v)-1]), true
	}
	var s string
	err := json.Unmarshal(v, &s)
	return s, err == nil
}

// wireEvent is an event as read from the batch, values left raw.
type wireEvent struct {
	ID        json.RawMessage `json:"id"`
	Type      json.RawMessage `json:"type"`
	Timestamp json.RawMessage `json:"timestamp"`
	Body      rawBody         `json:"body"`

	err error // the event did not decode into this shape
}

// validateEvent checks one event like types.ts's zod schemas. On failure it
// returns the (possibly empty) envelope id and a zod-like message.
func validateEvent(m *wireEvent) (envelope, string) {
	var ev envelope
	id, ok := str(m.ID)
	ev.ID = id
	if !ok || len(id) < 1 || len(id) > 800 || strings.Contains(id, "\r") {
		return ev, "id: Invalid string: must be 1-800 characters without \\r"
	}
	typ, _ := str(m.Type)
	if !eventTypes[typ] {
		return ev, fmt.Sprintf("type: Invalid discriminator value %q", typ)
	}
	ev.Type = typ
	tsStr, ok := str(m.Timestamp)
	if !ok {
		return ev, "timestamp: Required string"
	}
	t, ok := parseISO(tsStr)
	if !ok {
		return ev, "timestamp: Invalid ISO datetime"
	}
	ev.Timestamp = t
	body := m.Body
	if body == nil || m.err != nil {
		return ev, "body: Expected object"
	}
	ev.Body = body
	if typ == "sdk-log" {
		return ev, ""
	}
	var err string
	switch typ {
	case "trace-create":
		err = validateTrace(body)
	case "score-create":
		err = check(body, idRule(false), reqString("name"))
	default:
		err = validateObservation(typ, body)
	}
	ev.BodyID, _ = str(body["id"])
	return ev, err
}

type rule func(body rawBody) string

func check(body rawBody, rules ...rule) string {
	for _, r := range rules {
		if e := r(body); e != "" {
			return e
		}
	}
	return ""
}

func optString(k string) rule {
	return func(b rawBody) string {
		if v := b[k]; !isNull(v) && v[0] != '"' {
			return k + ": Expected string"
		}
		return ""
	}
}

func reqString(k string) rule {
	return func(b rawBody) string {
		if _, ok := str(b[k]); !ok {
			return k + ": Required string"
		}
		return ""
	}
}

func idRule(required bool) rule {
	return func(b rawBody) string {
		v := b["id"]
		if isNull(v) {
			if required {
				return "body.id: Required"
			}
			return ""
		}
		s, ok := str(v)
		if !ok || len(s) < 1 || len(s) > 800 || strings.Contains(s, "\r") {
			return "body.id: Invalid string: must be 1-800 characters without \\r"
		}
		return ""
	}
}

func optTime(k string) rule {
	return func(b rawBody) string {
		v := b[k]
		if isNull(v) {
			return ""
		}
		s, ok := str(v)
		if !ok {
			return k + ": Expected string"
		}
		if _, ok := parseISO(s); !ok {
			return k + ": Invalid ISO datetime"
		}
		return ""
	}
}

func optStringList(k string) rule {
	return func(b rawBody) string {
		v := b[k]
		if isNull(v) {
			return ""
		}
		var l []json.RawMessage
		if v[0] != '[' || json.Unmarshal(v, &l) != nil {
			return k + ": Expected array"
		}
		for i, e := range l {
			if _, ok := str(e); !ok {
				return fmt.Sprintf("%s.%d: Expected string", k, i)
			}
		}
		return ""
	}
}

func optBool(k string) rule {
	return func(b rawBody) string {
		if v := b[k]; !isNull(v) && string(v) != "true" && string(v) != "false" {
			return k + ": Expected boolean"
		}
		return ""
	}
}

var envName = regexp.MustCompile(`^[a-z0-9_-]+$`)

// environment normalizes body.environment like PublicEnvironmentName.
func environment(b rawBody) string {
	v := b["environment"]
	if isNull(v) {
		return ""
	}
	s, ok := str(v)
	if !ok {
		return "environment: Expected string"
	}
	s = strings.ToLower(s)
	for {
		t := strings.TrimPrefix(strings.TrimPrefix(s, "langfuse-"), "langfuse_")
		if t == s {
			break
		}
		s = t
	}
	if len(s) > 40 {
		s = s[:40]
	}
	if !envName.MatchString(s) {
		s = "default"
	}
	b["environment"], _ = json.Marshal(s)
	return ""
}

func validateTrace(b rawBody) string {
	if e := check(b, idRule(false), optTime("timestamp"), optString("name"), optString("userId"),
		optString("sessionId"), optString("release"), optString("version"), optStringList("tags"),
		optBool("public"), optString("externalId"), environment); e != "" {
		return e
	}
	if n, ok := str(b["name"]); ok && len(n) > 1000 && len([]rune(n)) > 1000 {
		b["name"], _ = json.Marshal(string([]rune(n)[:1000]))
	}
	return ""
}

var levels = map[string]bool{"DEBUG": true, "DEFAULT": true, "WARNING": true, "ERROR": true}

func validateObservation(typ string, b rawBody) string {
	rules := []rule{idRule(true), optString("traceId"), optString("name"), optTime("startTime"),
		optString("statusMessage"), optString("parentObservationId"), optString("version"), environment,
		func(b rawBody) string {
			v := b["level"]
			if isNull(v) {
				return ""
			}
			if s, _ := str(v); !levels[s] {
				return "level: Invalid enum value. Expected 'DEBUG' | 'DEFAULT' | 'WARNING' | 'ERROR'"
			}
			return ""
		}}
	if typ != "event-create" {
		rules = append(rules, optTime("endTime"))
	}
	if strings.HasPrefix(typ, "generation-") || strings.HasPrefix(typ, "observation-") || typ == "embedding-create" {
		rules = append(rules, optTime("completionStartTime"), optString("model"), modelParameters,
			usageDetails, costDetails, promptPair)
	}
	return check(b, rules...)
}

func rawObject(v json.RawMessage) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if len(v) == 0 || v[0] != '{' || json.Unmarshal(v, &m) != nil {
		return nil, false
	}
	return m, true
}

func isNumber(v json.RawMessage) bool {
	return len(v) > 0 && (v[0] == '-' || (v[0] >= '0' && v[0] <= '9'))
}

// optRecord: body[k] absent, null, or an object each of whose members passes
// member, which returns "" or what is wrong with the member's value.
func optRecord(k string, member func(name string, x json.RawMessage) string) rule {
	return func(b rawBody) string {
		v := b[k]
		if isNull(v) {
			return ""
		}
		m, ok := rawObject(v)
		if !ok {
			return k + ": Expected object"
		}
		for name, x := range m {
			if e := member(name, x); e != "" {
				return k + "." + name + ": " + e
			}
		}
		return ""
	}
}

var modelParameters = optRecord("modelParameters", func(_ string, x json.RawMessage) string {
	switch {
	case isNull(x), x[0] == '"', string(x) == "true", string(x) == "false", isNumber(x):
	case x[0] == '[':
		var l []string
		if json.Unmarshal(x, &l) != nil {
			return "Expected string array"
		}
	case x[0] == '{':
		var sm map[string]string
		if json.Unmarshal(x, &sm) != nil {
			return "Expected record of strings"
		}
	default:
		return "Invalid union"
	}
	return ""
})

// nonNegInt: a JSON integer >= 0 (or a numeric string, which the map form parses).
func nonNegInt(x json.RawMessage) bool {
	s := string(x)
	if q, ok := str(x); ok {
		s = q
	} else if !isNumber(x) {
		return false
	}
	n, err := strconv.ParseFloat(s, 64)
	return err == nil && n >= 0 && n == math.Trunc(n)
}

var usageDetails = optRecord("usageDetails", func(name string, x json.RawMessage) string {
	if !strings.HasSuffix(name, "_details") && !nonNegInt(x) { // OpenAI shapes' nested details pass
		return "Expected non-negative integer"
	}
	return ""
})

var costDetails = optRecord("costDetails", func(_ string, x json.RawMessage) string {
	f, err := strconv.ParseFloat(string(x), 64)
	if !isNumber(x) || err != nil {
		return "Expected number"
	}
	if f < 0 {
		return "Expected non-negative number"
	}
	return ""
})

func promptPair(b rawBody) string {
	_, n := b["promptName"]
	_, v := b["promptVersion"]
	if n != v {
		return "promptName and promptVersion: send both or neither"
	}
	return ""
}
