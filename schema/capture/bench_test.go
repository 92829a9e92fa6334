package capture

import (
	"encoding/json"
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
