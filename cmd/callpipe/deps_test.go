package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryLinksNoTestTooling keeps the test fakes, the integration
// harness and the OpenAPI validator out of the production binary.
func TestBinaryLinksNoTestTooling(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "github.com/callpipe/callpipe/integration") || strings.Contains(dep, "langfusetest") ||
			strings.HasPrefix(dep, "github.com/getkin/kin-openapi") || strings.HasPrefix(dep, "github.com/testcontainers/") {
			t.Errorf("callpipe links %s", dep)
		}
	}
}

// TestImportsPointDownTheFlow keeps the layering of docs/architecture.md: a
// package imports only packages of its own layer or below, and the packages
// of the ingest/transform/store layer do not import each other's folders.
func TestImportsPointDownTheFlow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	const mod = "github.com/callpipe/callpipe/"
	layers := []string{"schema", "internal", "bus", "ingest|transform|store", "sinks", "serve", "tools", "config", "cmd"}
	layerOf := func(pkg string) (int, string) {
		rel := strings.TrimPrefix(pkg, mod)
		top, _, _ := strings.Cut(rel, "/")
		for i, l := range layers {
			for _, name := range strings.Split(l, "|") {
				if top == name {
					return i, top
				}
			}
		}
		return -1, top
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, mod+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		from, fromTop := layerOf(f[0])
		if from < 0 {
			continue // integration, deploy: tests and deployment checks may reach anything
		}
		for _, imp := range f[1:] {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			to, toTop := layerOf(imp)
			checked++
			switch {
			case to < 0:
				t.Errorf("%s imports %s, which is outside the layers", f[0], imp)
			case to > from:
				t.Errorf("%s (layer %s) imports %s (layer %s): imports must point down the flow", f[0], layers[from], imp, layers[to])
			case to == from && fromTop != toTop:
				t.Errorf("%s imports %s: %s and %s sit side by side and must not import each other", f[0], imp, fromTop, toTop)
			}
		}
	}
	if checked < 50 {
		t.Fatalf("only %d imports checked: go list output not understood", checked)
	}
}
