package schema

import (
	"bytes"
	"encoding/json"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// schemaExceptions are the fixtures on which the JSON Schema and Decode
// disagree, each because of a rule JSON Schema cannot express (the schema's
// description lists the same rules). Decode rejects all of them; the schema
// accepts them. TestJSONSchemaAgrees fails if an exception stops being one,
// so the list stays exact.
var schemaExceptions = map[string]string{
	// Cross-field rules: JSON Schema compares a value with constants, never
	// with another field of the instance, so it cannot order timestamps.
	"invalid_end_before_start.json":         "end_time >= start_time is cross-field",
	"invalid_end_before_start_offsets.json": "end_time >= start_time is cross-field",
	"invalid_first_token_before_start.json": "first_token_time >= start_time is cross-field",
	"invalid_first_token_after_end.json":    "first_token_time <= end_time is cross-field",
	// UTF-8: a schema validates the parsed document, and JSON parsers
	// (encoding/json here) replace invalid bytes with U+FFFD before it
	// sees any string.
	"invalid_utf8.json": "invalid UTF-8 is replaced by the parser",
	// Duplicate keys: parsers keep one of the values (encoding/json the
	// last), so the schema sees a single key.
	"invalid_duplicate_key.json":          "duplicate keys are merged by the parser",
	"invalid_metadata_duplicate_key.json": "duplicate keys are merged by the parser",
	// Number range: request is "any JSON value"; the parser keeps 1e999 as
	// an arbitrary-precision number. Decode rejects numbers that are not
	// finite float64 anywhere, because ClickHouse and most consumers read
	// JSON numbers as doubles.
	"invalid_number_overflow_in_request.json": "float64 range of opaque values",
}

// generatedExceptions are the generated (not committed) cases on which the
// schema and Decode disagree.
var generatedExceptions = map[string]string{
	// Size: JSON Schema has no keyword for the encoded size of a document.
	"oversize": "event size is not expressible",
}

func compileSchema(tb testing.TB) *jsonschema.Schema {
	tb.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(JSONSchema()))
	if err != nil {
		tb.Fatalf("call-event.v1.json: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat() // date-time is an annotation only, unless asserted
	if err := c.AddResource(JSONSchemaID, doc); err != nil {
		tb.Fatal(err)
	}
	sch, err := c.Compile(JSONSchemaID)
	if err != nil {
		tb.Fatalf("compile call-event.v1.json: %v", err)
	}
	return sch
}

// schemaVerdict validates data against the schema. A document that is not
// exactly one JSON value is invalid (the schema cannot even be applied).
func schemaVerdict(sch *jsonschema.Schema, data []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}

func TestJSONSchemaAgrees(t *testing.T) {
	sch := compileSchema(t)
	type tcase struct {
		name       string
		data       []byte
		exceptions map[string]string
	}
	var cases []tcase
	for _, fx := range loadFixtures(t) {
		cases = append(cases, tcase{fx.name, fx.data, schemaExceptions})
	}
	cases = append(cases, tcase{"oversize", oversizeEvent(t), generatedExceptions})
	seen := map[string]bool{}
	for _, c := range cases {
		_, decErr := Decode(c.data, DefaultLimits())
		schErr := schemaVerdict(sch, c.data)
		why, exception := c.exceptions[c.name]
		seen[c.name] = exception
		switch {
		case exception:
			if decErr == nil || schErr != nil {
				t.Errorf("%s: listed as an exception (%s), but Decode error = %v, schema error = %v", c.name, why, decErr, schErr)
			}
		case (decErr == nil) != (schErr == nil):
			t.Errorf("%s: Decode and the JSON Schema disagree:\n  Decode: %v\n  schema: %v", c.name, decErr, schErr)
		}
	}
	for _, m := range []map[string]string{schemaExceptions, generatedExceptions} {
		for name := range m {
			if !seen[name] {
				t.Errorf("exception %s: no such case", name)
			}
		}
	}
}

// schemaDoc is the part of call-event.v1.json the tests inspect.
type schemaDoc struct {
	Description          string
	Required             []string
	AdditionalProperties *bool
	Properties           orderedKeys
}

// orderedKeys is the keys of a JSON object, in document order.
type orderedKeys []string

func (k *orderedKeys) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		*k = append(*k, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

func TestJSONSchemaShape(t *testing.T) {
	var doc schemaDoc
	if err := json.Unmarshal(JSONSchema(), &doc); err != nil {
		t.Fatal(err)
	}
	// Properties: the fields Decode knows, in schema order, which is also
	// Event's field order and json tags.
	if !slices.Equal(doc.Properties, fieldNames[:]) {
		t.Errorf("schema properties %q\nwant %q", doc.Properties, fieldNames)
	}
	var tags []string
	rt := reflect.TypeFor[Event]()
	for i := range rt.NumField() {
		tags = append(tags, strings.Split(rt.Field(i).Tag.Get("json"), ",")[0])
	}
	if !slices.Equal(tags, fieldNames[:]) {
		t.Errorf("Event json tags %q\nwant %q", tags, fieldNames)
	}
	if want := []string{"id", "start_time", "endpoint", "model"}; !slices.Equal(doc.Required, want) {
		t.Errorf("required %q, want %q", doc.Required, want)
	}
	if doc.AdditionalProperties == nil || *doc.AdditionalProperties {
		t.Errorf("additionalProperties must be false (unknown fields are rejected)")
	}
	// The description documents what the schema cannot check.
	for _, s := range []string{"end_time >= start_time", "first_token_time", "1 MiB", "UTF-8", "twice", "float64"} {
		if !strings.Contains(doc.Description, s) {
			t.Errorf("schema description does not mention %q", s)
		}
	}
	if JSONSchema()[0] != '{' {
		t.Errorf("JSONSchema() does not start with '{'")
	}
	a := JSONSchema()
	a[0] = 'x'
	if JSONSchema()[0] != '{' {
		t.Errorf("JSONSchema() returns shared memory")
	}
}

// The endpoint rule exists twice: checkEndpoint in Go and a pattern in the
// schema. Compare them on every rune, in first and later positions.
func TestEndpointPatternMatchesGo(t *testing.T) {
	var doc struct {
		Properties struct {
			Endpoint struct{ Pattern string }
		}
	}
	if err := json.Unmarshal(JSONSchema(), &doc); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(doc.Properties.Endpoint.Pattern)
	check := func(s string) {
		if got, want := re.MatchString(s), checkEndpoint(s) == ""; got != want {
			t.Errorf("endpoint %q: pattern match %v, checkEndpoint ok %v (%s)", s, got, want, checkEndpoint(s))
		}
	}
	for _, s := range []string{"", "/", "//", "/a", "a", "/v1/chat/completions", "http://h/v1", "//h/v1", "/v1?x", "/v1#x", "/v1/", "/%20", "https:/x", "/a//b"} {
		check(s)
	}
	for r := rune(0); r <= utf8.MaxRune; r++ {
		if !utf8.ValidRune(r) {
			continue
		}
		c := string(r)
		check("/" + c)
		check("/v1" + c + "x")
	}
}
