package capture

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// BenchmarkEvent: the edge's pass over a chat event of ~2 KB with the
// default masks, by mode and by whether the text holds something to mask
// (the counter is left out: it is normalize's tokenizer, measured there).
//
//	go test -run '^$' -bench BenchmarkEvent -cpu 1 ./capture/
func BenchmarkEvent(b *testing.B) {
	text := strings.Repeat("The quarterly report shows steady growth in all regions. ", 30)
	for _, bc := range []struct {
		name, mode, extra string
	}{
		{"full/clean", Full, ""}, {"full/email", Full, " Mail bob.smith@example.com."},
		{"truncated/clean", Truncated, ""}, {"none/clean", None, ""},
	} {
		b.Run(bc.name, func(b *testing.B) {
			p, err := New(Options{Payloads: bc.mode, Masks: DefaultMasks})
			if err != nil {
				b.Fatal(err)
			}
			ev := chatEvent("m", "")
			ev.Request = json.RawMessage(`{"model":"m","messages":[{"role":"user","content":"` + text + bc.extra + `"}]}`)
			req, resp := ev.Request, ev.Response
			b.SetBytes(int64(len(req) + len(resp)))
			b.ReportAllocs()
			for b.Loop() {
				ev.Request, ev.Response, ev.Capture = req, resp, nil
				p.Event(ev)
			}
		})
	}
}

// BenchmarkEventEmbedding: the edge's pass over an embeddings call whose
// answer is 256 floats (digit runs that the phone mask's filter lets
// through), with the default masks.
//
//	go test -run '^$' -bench BenchmarkEventEmbedding -cpu 1 ./schema/capture/
func BenchmarkEventEmbedding(b *testing.B) {
	p, err := New(Options{Masks: DefaultMasks})
	if err != nil {
		b.Fatal(err)
	}
	var resp strings.Builder
	resp.WriteString(`{"object":"list","created":1733350000,"model":"bge-m3","data":[{"index":0,"object":"embedding","embedding":[`)
	for i := range 256 {
		if i > 0 {
			resp.WriteByte(',')
		}
		fmt.Fprintf(&resp, "%.17f", float64(i%97)/97-0.5)
	}
	resp.WriteString(`]}],"usage":{"prompt_tokens":12,"total_tokens":12}}`)
	ev := chatEvent("bge-m3", "")
	ev.Request = json.RawMessage(`{"model":"bge-m3","input":"the pipeline stores every call once"}`)
	req, answer := ev.Request, json.RawMessage(resp.String())
	b.SetBytes(int64(len(req) + len(answer)))
	b.ReportAllocs()
	for b.Loop() {
		ev.Request, ev.Response, ev.Capture = req, answer, nil
		p.Event(ev)
	}
}
