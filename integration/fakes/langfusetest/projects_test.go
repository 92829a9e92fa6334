package langfusetest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
)

// TestProjectsRoute checks GET /api/public/projects against Langfuse's
// published definition: the Projects schema for a project key, 401 for a
// wrong secret or none, 403 for a Bearer (public key only) caller.
func TestProjectsRoute(t *testing.T) {
	srv := New(Options{ProjectID: "p-42", ProjectName: "team"})
	defer srv.Close()
	for _, version := range []string{"langfuse-3.225.4", "langfuse-4.16.0"} {
		spec, err := LoadOpenAPI("testdata/" + version + "/openapi.yml")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, user, pass, bearer string
			status                   int
			body                     string
		}{
			{name: "project key", user: "pk-lf-test", pass: "sk-lf-test", status: 200, body: `"id":"p-42"`},
			{name: "wrong secret", user: "pk-lf-test", pass: "sk-lf-nope", status: 401, body: "Invalid credentials"},
			{name: "no auth", status: 401, body: "Invalid credentials"},
			{name: "public key only", bearer: "pk-lf-test", status: 403, body: "organization key"},
		} {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/public/projects", nil)
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			if tc.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+tc.bearer)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !bytes.Contains(body, []byte(tc.body)) {
				t.Fatalf("%s %s: %d %s, want %d with %s", version, tc.name, resp.StatusCode, body, tc.status, tc.body)
			}
			// Route on the path only, as OpenAPI.Check does.
			local, _ := http.NewRequest(http.MethodGet, "/api/public/projects", nil)
			route, params, err := spec.router.FindRoute(local)
			if err != nil {
				t.Fatal(err)
			}
			in := &openapi3filter.ResponseValidationInput{
				RequestValidationInput: &openapi3filter.RequestValidationInput{Request: local, PathParams: params, Route: route},
				Status:                 resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(body)),
				Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
			}
			if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
				t.Fatalf("%s %s: answer does not match the definition: %v\n%s", version, tc.name, err, body)
			}
		}
	}
	// A body that breaks the schema must fail the check (the check can fail).
	spec, _ := LoadOpenAPI("testdata/langfuse-4.16.0/openapi.yml")
	req, _ := http.NewRequest(http.MethodGet, "/api/public/projects", nil)
	route, params, err := spec.router.FindRoute(req)
	if err != nil {
		t.Fatal(err)
	}
	bad := []byte(`{"data":[{"id":"p","name":"n"}]}`) // no organization, no metadata
	err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(bad)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	})
	if err == nil {
		t.Fatal("a Project without organization and metadata passed the schema check")
	}
}
