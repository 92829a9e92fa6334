package langfusetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// OpenAPI checks ingestion requests against Langfuse's published OpenAPI
// definition (web/public/generated/api/openapi.yml), with kin-openapi.
type OpenAPI struct {
	router routers.Router
}

var (
	specMu    sync.Mutex
	specCache = map[string]*OpenAPI{}
)

// LoadOpenAPI loads and validates a Langfuse openapi.yml (cached per path).
func LoadOpenAPI(path string) (*OpenAPI, error) {
	specMu.Lock()
	defer specMu.Unlock()
	if o, ok := specCache[path]; ok {
		return o, nil
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	// Route on the path only: the spec's servers list has no local host.
	doc.Servers = openapi3.Servers{{URL: "/"}}
	// Langfuse's generated file says 3.0.1 but uses "const" (3.1) in a few
	// schemas; read it as 3.1 so kin-openapi accepts them.
	doc.OpenAPI = "3.1.0"
	if doc.Info != nil && doc.Info.Version == "" {
		doc.Info.Version = "unversioned" // the generated file leaves it empty
	}
	// Fern writes its undiscriminated unions (e.g. MapValue: string | integer
	// | number | ...) as oneOf, but they mean "the first variant that
	// matches" (Fern's own clients and Langfuse's zod schemas accept an
	// integer, which matches both integer and number); check them as anyOf.
	seen := map[*openapi3.Schema]bool{}
	for _, ref := range doc.Components.Schemas {
		undiscriminatedToAnyOf(ref, seen)
	}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	o := &OpenAPI{router: r}
	specCache[path] = o
	return o, nil
}

func undiscriminatedToAnyOf(ref *openapi3.SchemaRef, seen map[*openapi3.Schema]bool) {
	if ref == nil || ref.Value == nil || seen[ref.Value] {
		return
	}
	sc := ref.Value
	seen[sc] = true
	if len(sc.OneOf) > 0 && sc.Discriminator == nil {
		sc.AnyOf = append(sc.AnyOf, sc.OneOf...)
		sc.OneOf = nil
	}
	for _, list := range []openapi3.SchemaRefs{sc.OneOf, sc.AnyOf, sc.AllOf} {
		for _, r := range list {
			undiscriminatedToAnyOf(r, seen)
		}
	}
	for _, r := range sc.Properties {
		undiscriminatedToAnyOf(r, seen)
	}
	undiscriminatedToAnyOf(sc.Items, seen)
	undiscriminatedToAnyOf(sc.Not, seen)
	if sc.AdditionalProperties.Schema != nil {
		undiscriminatedToAnyOf(sc.AdditionalProperties.Schema, seen)
	}
}

// Check validates one request body against the operation's request schema.
func (o *OpenAPI) Check(method, path, contentType string, body []byte) error {
	u := &url.URL{Path: path}
	req, _ := http.NewRequest(method, u.String(), io.NopCloser(bytes.NewReader(body)))
	req.Header.Set("Content-Type", contentType)
	route, params, err := o.router.FindRoute(req)
	if err != nil {
		return fmt.Errorf("route %s %s: %w", method, path, err)
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	return openapi3filter.ValidateRequest(context.Background(), in)
}

// Violations are the OpenAPI violations seen so far (requests are still
// processed, so a test can report every one of them).
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

func (s *Server) checkOpenAPI(path, contentType string, data []byte) {
	if s.openapi == nil {
		return
	}
	if err := s.openapi.Check(http.MethodPost, path, contentType, data); err != nil {
		msg := err.Error()
		if len(msg) > 200000 {
			msg = msg[:200000]
		}
		s.mu.Lock()
		s.violations = append(s.violations, msg)
		s.mu.Unlock()
	}
}
