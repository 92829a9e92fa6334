package transform

import (
	"math"
	"strings"
	"testing"
)

func f64(v float64) *float64 { return &v }

// A Langfuse-shaped table prices by regular expression, first row first; a
// row without prices gives no cost and shadows broader rows below it.
func TestPriceFileCompile(t *testing.T) {
	pt, err := PriceFile{Models: []ModelPrice{
		{ModelName: "qwen-free", MatchPattern: `(?i)^qwen2\.5-0\.5b`, Unit: "TOKENS"},
		{ModelName: "qwen", MatchPattern: `(?i)^qwen2\.5`, InputPrice: f64(0.5e-6), OutputPrice: f64(1.5e-6), Unit: "TOKENS"},
		{ModelName: "bge", MatchPattern: `^bge-m3$`, InputPrice: f64(0.02e-6)},
	}}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		model   string
		in, out int64
		want    *float64
	}{
		{"Qwen2.5-7B-Instruct", 1_000_000, 2_000_000, f64(3.5)},
		{"qwen2.5-0.5b-instruct", 1000, 1000, nil},
		{"bge-m3", 1_000_000, 0, f64(0.02)},
		{"BGE-M3", 1_000_000, 0, nil}, // the pattern is case-sensitive without (?i)
		{"llama", 1, 1, nil},
	} {
		got := pt.Cost(c.model, c.in, c.out)
		if (got == nil) != (c.want == nil) || (got != nil && math.Abs(*got-*c.want) > 1e-12) {
			t.Errorf("%s: cost %v, want %v", c.model, fmtCost(got), fmtCost(c.want))
		}
	}
}

func fmtCost(c *float64) any {
	if c == nil {
		return "none"
	}
	return *c
}

// Every bad field is named with its row.
func TestPriceFileErrors(t *testing.T) {
	_, err := PriceFile{Models: []ModelPrice{
		{MatchPattern: "ok"},
		{ModelName: "a", MatchPattern: "(", InputPrice: f64(-1)},
		{ModelName: "b", MatchPattern: "b", Unit: "CHARACTERS"},
	}}.Compile()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"models[0].modelName: required", "models[1].matchPattern: not a regular expression",
		"models[1].inputPrice: -1: must be a non-negative number", `models[2].unit: "CHARACTERS": callpipe prices TOKENS only`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := DefaultPriceFile().Compile(); err != nil {
		t.Fatalf("default table: %v", err)
	}
}

// Stored rows come before the configured ones, from the next Table on.
func TestLivePrices(t *testing.T) {
	conf, _ := ParsePrices([]string{"qwen*=1/1"})
	live := NewLivePrices(conf)
	if c := live.Table().Cost("qwen2.5", 1e6, 0); c == nil || *c != 1 {
		t.Fatalf("configured: %v", fmtCost(c))
	}
	stored, _ := PriceFile{Models: []ModelPrice{{ModelName: "q", MatchPattern: "^qwen", InputPrice: f64(2e-6), OutputPrice: f64(0)}}}.Compile()
	live.Set(stored)
	if c := live.Table().Cost("qwen2.5", 1e6, 0); c == nil || *c != 2 {
		t.Fatalf("stored: %v", fmtCost(c))
	}
	live.Set(nil)
	if c := live.Table().Cost("qwen2.5", 1e6, 0); c == nil || *c != 1 {
		t.Fatalf("after removal: %v", fmtCost(c))
	}
}

func TestReadPriceFile(t *testing.T) {
	if f, err := ReadPriceFile(strings.NewReader(`{"models":[{"modelName":"x","matchPattern":"(?i)^x$","inputPrice":1e-6,"outputPrice":2e-6}]}`)); err != nil || len(f.Models) != 1 {
		t.Fatalf("valid table: %+v %v", f, err)
	}
	for name, in := range map[string]string{
		"not json":      `{`,
		"unknown field": `{"models":[],"currency":"EUR"}`,
		"bad pattern":   `{"models":[{"modelName":"x","matchPattern":"(","inputPrice":1}]}`,
	} {
		if _, err := ReadPriceFile(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
