package schema

import _ "embed"

//go:embed call-event.v1.json
var jsonSchema []byte

// JSONSchemaID is the $id of the call-event v1 JSON Schema.
const JSONSchemaID = "https://github.com/callpipe/callpipe/schema/call-event.v1.json"

// JSONSchema returns the JSON Schema (draft 2020-12) of call-event v1, for
// producers and other languages. It states the same rules as Decode as far
// as JSON Schema can express them; its description lists what it cannot
// (cross-field time order, event size, raw UTF-8, duplicate keys, float64
// range). Validators must assert the "date-time" format. The returned slice
// is a copy.
func JSONSchema() []byte {
	return append([]byte(nil), jsonSchema...)
}
