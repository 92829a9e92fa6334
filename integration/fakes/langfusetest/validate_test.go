package langfusetest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestRecordRules checks the object-valued observation fields
// (modelParameters, usageDetails, costDetails): absent or null passes, a
// non-object and a bad member fail with the member's path.
func TestRecordRules(t *testing.T) {
	for _, tc := range []struct {
		rule rule
		body string
		want string
	}{
		{modelParameters, `{}`, ""},
		{modelParameters, `{"modelParameters":null}`, ""},
		{modelParameters, `{"modelParameters":{"t":0.5,"s":["a"],"m":{"k":"v"},"b":true,"n":null}}`, ""},
		{modelParameters, `{"modelParameters":[1]}`, "modelParameters: Expected object"},
		{modelParameters, `{"modelParameters":{"s":[1]}}`, "modelParameters.s: Expected string array"},
		{modelParameters, `{"modelParameters":{"m":{"k":1}}}`, "modelParameters.m: Expected record of strings"},
		{usageDetails, `{"usageDetails":{"input":1,"output":"2","prompt_tokens_details":{"cached":1}}}`, ""},
		{usageDetails, `{"usageDetails":"many"}`, "usageDetails: Expected object"},
		{usageDetails, `{"usageDetails":{"input":-1}}`, "usageDetails.input: Expected non-negative integer"},
		{usageDetails, `{"usageDetails":{"input":1.5}}`, "usageDetails.input: Expected non-negative integer"},
		{costDetails, `{"costDetails":{"total":0.25}}`, ""},
		{costDetails, `{"costDetails":{"total":"x"}}`, "costDetails.total: Expected number"},
		{costDetails, `{"costDetails":{"total":-1}}`, "costDetails.total: Expected non-negative number"},
	} {
		var b rawBody
		if err := json.Unmarshal([]byte(tc.body), &b); err != nil {
			t.Fatal(err)
		}
		if got := tc.rule(b); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.body, got, tc.want)
		}
	}
}

// TestMethodNotAllowed checks that each route answers another method with
// Langfuse's 405 JSON message.
func TestMethodNotAllowed(t *testing.T) {
	srv := New(Options{})
	defer srv.Close()
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/api/public/ingestion"},
		{http.MethodGet, "/api/public/otel/v1/traces"},
		{http.MethodPost, "/api/public/projects"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || err != nil || body["message"] != "Method not allowed" {
			t.Errorf("%s %s: %d %v %v", tc.method, tc.path, resp.StatusCode, body, err)
		}
	}
}
