package schema

// Top-level fields in schema order: the order of Event's fields and of the
// JSON Schema's properties. Errors are reported in this order.
const (
	fID = iota
	fTraceID
	fSessionID
	fStartTime
	fEndTime
	fFirstTokenTime
	fEndpoint
	fModel
	fInstance
	fUser
	fAPIKey
	fAPIKeyHash
	fAPIKeyPrefix
	fRequest
	fResponse
	fStream
	fStatus
	fError
	fUsage
	fMetadata
	fTags
	fSource
	fBatchID
	fRequestTruncated
	fCapture
	numFields
)

// fieldNames are the JSON names of the top-level fields, in schema order.
var fieldNames = [numFields]string{
	fID:               "id",
	fTraceID:          "trace_id",
	fSessionID:        "session_id",
	fStartTime:        "start_time",
	fEndTime:          "end_time",
	fFirstTokenTime:   "first_token_time",
	fEndpoint:         "endpoint",
	fModel:            "model",
	fInstance:         "instance",
	fUser:             "user",
	fAPIKey:           "api_key",
	fAPIKeyHash:       "api_key_hash",
	fAPIKeyPrefix:     "api_key_prefix",
	fRequest:          "request",
	fResponse:         "response",
	fStream:           "stream",
	fStatus:           "status",
	fError:            "error",
	fUsage:            "usage",
	fMetadata:         "metadata",
	fTags:             "tags",
	fSource:           "source",
	fBatchID:          "batch_id",
	fRequestTruncated: "request_truncated",
	fCapture:          "capture",
}

// Field names are matched exactly: unlike encoding/json, "ID" is not "id"
// but an unknown field, as in the JSON Schema.
func lookupField(key []byte) int {
	switch string(key) {
	case "id":
		return fID
	case "trace_id":
		return fTraceID
	case "session_id":
		return fSessionID
	case "start_time":
		return fStartTime
	case "end_time":
		return fEndTime
	case "first_token_time":
		return fFirstTokenTime
	case "endpoint":
		return fEndpoint
	case "model":
		return fModel
	case "instance":
		return fInstance
	case "user":
		return fUser
	case "api_key":
		return fAPIKey
	case "api_key_hash":
		return fAPIKeyHash
	case "api_key_prefix":
		return fAPIKeyPrefix
	case "request":
		return fRequest
	case "response":
		return fResponse
	case "stream":
		return fStream
	case "status":
		return fStatus
	case "error":
		return fError
	case "usage":
		return fUsage
	case "metadata":
		return fMetadata
	case "tags":
		return fTags
	case "source":
		return fSource
	case "batch_id":
		return fBatchID
	case "request_truncated":
		return fRequestTruncated
	case "capture":
		return fCapture
	}
	return -1
}
