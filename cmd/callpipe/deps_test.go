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
