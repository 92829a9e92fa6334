package langfuse_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/sinks/langfuse"
)

// The ingestion encoder writes every call's events byte for byte as
// MapCall's events encode, over calls that exercise every optional part.
func TestCallEventsMatchMapCall(t *testing.T) {
	variants := map[string]func(c *schema.Call){
		"full":    func(c *schema.Call) {},
		"minimal": func(c *schema.Call) { *c = schema.Call{ID: c.ID, StartTime: c.StartTime} },
		"zero start and end": func(c *schema.Call) {
			c.StartTime, c.EndTime = time.Time{}, time.Time{}
		},
		"zero first token": func(c *schema.Call) { c.FirstTokenTime = &time.Time{} },
		"no trace id":      func(c *schema.Call) { c.TraceID = "" },
		"error status":     func(c *schema.Call) { c.Status, c.Error = 503, "" },
		"error text":       func(c *schema.Call) { c.Error = "model \"x\" <failed>\n" },
		"no usage":         func(c *schema.Call) { c.InputTokens, c.OutputTokens, c.TotalTokens = -1, -1, -1 },
		"part usage":       func(c *schema.Call) { c.InputTokens, c.TotalTokens = -1, -1 },
		"no cost":          func(c *schema.Call) { c.CostUSD = nil },
		"tiny cost":        func(c *schema.Call) { v := 1.5e-9; c.CostUSD = &v },
		"text only": func(c *schema.Call) {
			c.Input, c.Output, c.InputText, c.OutputText = nil, json.RawMessage("null"), "a \"b\" é", "out"
		},
		"no tags, no model": func(c *schema.Call) { c.Tags, c.Model, c.Kind = nil, "", "" },
		"escapes": func(c *schema.Call) {
			c.ID, c.UserID, c.SessionID, c.Model = "y\"\n\t\u2028\x01<>&é", "ü\u2029", "s\\", "m\xff"
		},
		"local time": func(c *schema.Call) {
			z := time.FixedZone("x", 3600)
			c.StartTime, c.EndTime = c.StartTime.In(z), c.EndTime.In(z)
		},
	}
	opts := []langfuse.MapOptions{{}, {Environment: "prod", Release: "r1"}, {MaxFieldBytes: 10}}
	for name, change := range variants {
		c := fullCall("call-" + name)
		change(&c)
		for _, o := range opts {
			raw, ids, types := langfuse.CallEvents(&c, o)
			tr, gen := langfuse.MapCall(&c, o)
			for k, ev := range []langfuse.Event{tr, gen} {
				if want := ev.AppendJSON(nil); !bytes.Equal(raw[k], want) {
					t.Errorf("%s %+v %s:\n got %s\nwant %s", name, o, ev.Type, raw[k], want)
				}
				if ids[k] != ev.ID || types[k] != ev.Type {
					t.Errorf("%s: id/type %s %s, want %s %s", name, ids[k], types[k], ev.ID, ev.Type)
				}
				if !json.Valid(raw[k]) {
					t.Errorf("%s: invalid JSON %s", name, raw[k])
				}
			}
		}
	}
	// The envelope ids stay what they were (a changed id would duplicate
	// every resent event): SHA-256 of type, NUL, call id, as a UUID.
	for _, id := range []string{"", "call-1", strings.Repeat("long-id-", 40)} {
		h := sha256.Sum256([]byte(langfuse.TypeGenerationCreate + "\x00" + id))
		s := hex.EncodeToString(h[:16])
		want := s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
		if got := langfuse.EnvelopeID(id, langfuse.TypeGenerationCreate); got != want {
			t.Errorf("EnvelopeID(%q) = %s, want %s", id, got, want)
		}
	}
	long := fullCall(strings.Repeat("long-id-", 40)) // longer than the id hash's stack buffer
	raw, ids, _ := langfuse.CallEvents(&long, langfuse.MapOptions{})
	if ids[0] != langfuse.EnvelopeID(long.ID, langfuse.TypeTraceCreate) || !json.Valid(raw[1]) {
		t.Fatalf("long id: %s", ids[0])
	}
}
