package deploy

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestGrafanaDashboardMatchesTheCode parses deploy/grafana/callpipe.json and
// checks that every callpipe_* metric its queries use is registered somewhere
// in the code, so that a renamed metric cannot leave a silently empty panel.
func TestGrafanaDashboardMatchesTheCode(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("grafana", "callpipe.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.Title == "" || len(dash.Panels) < 8 {
		t.Fatalf("dashboard %q has %d panels", dash.Title, len(dash.Panels))
	}

	// Metric names and their label sets as the Go code registers them.
	defined := map[string]bool{}
	nameRE := regexp.MustCompile(`"(callpipe_[a-z0-9_]+)"`)
	err = filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == ".state" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range nameRE.FindAllStringSubmatch(string(src), -1) {
			defined[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	useRE := regexp.MustCompile(`callpipe_[a-z0-9_]+`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, name := range useRE.FindAllString(tg.Expr, -1) {
				base := name
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if strings.HasSuffix(base, suffix) && defined[strings.TrimSuffix(base, suffix)] {
						base = strings.TrimSuffix(base, suffix)
					}
				}
				if !defined[base] {
					t.Errorf("panel %q uses %s, which no Go file registers", p.Title, name)
				}
			}
		}
	}
}
