// Package badinput is a corpus of malformed requests for the entry points
// (collector and proxy): truncated JSON, wrong types, huge fields, invalid
// UTF-8, compression bombs, wrong content types and mixed batches. Each case
// says what a correct collector answers, so that tests of both entry points
// share one definition of "bad input".
package badinput

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Case is one malformed request to POST /v1/events.
type Case struct {
	Name            string
	ContentType     string
	ContentEncoding string
	Body            []byte
	// Status is what the collector must answer; WantError is a substring of
	// its error (request-level) or of a rejection (event-level) naming the
	// field or the reason.
	Status    int
	WantError string
	// ValidIDs are events of the same request that must still be accepted.
	ValidIDs []string
}

// validMembers are the members of a valid event, in order.
var validMembers = [][2]string{
	{"id", ""}, // filled in by Valid
	{"start_time", `"2026-11-26T10:00:00Z"`},
	{"end_time", `"2026-11-26T10:00:01Z"`},
	{"endpoint", `"/v1/chat/completions"`},
	{"model", `"qwen2.5-instruct"`},
	{"user", `"alice"`},
	{"request", `{"messages":[{"role":"user","content":"hello"}]}`},
	{"response", `{"choices":[{"message":{"role":"assistant","content":"hi"}}]}`},
	{"usage", `{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}`},
}

// Valid is a complete, valid event with the given id.
func Valid(id string) string { return with(id, "", "") }

// with is Valid(id) with member key set to the raw value (added when the
// event has no such member; removed when raw is empty).
func with(id, key, raw string) string {
	var b strings.Builder
	b.WriteByte('{')
	seen := false
	for _, m := range validMembers {
		k, v := m[0], m[1]
		if k == "id" {
			v = `"` + id + `"`
		}
		if k == key {
			seen = true
			if raw == "" {
				continue
			}
			v = raw
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		b.WriteString(`"` + k + `":` + v)
	}
	if !seen && key != "" {
		b.WriteString(`,"` + key + `":` + raw)
	}
	b.WriteByte('}')
	return b.String()
}

// MaxBodyBytes is the collector limit the corpus assumes (the default).
const MaxBodyBytes = 8 << 20

// MaxEventBytes is the event limit the corpus assumes (the default).
const MaxEventBytes = 1 << 20

// Cases returns the corpus. ids are unique per call of Cases with prefix.
func Cases(prefix string) []Case {
	id := func(s string) string { return prefix + "-" + s }
	var cs []Case
	add := func(c Case) {
		if c.ContentType == "" {
			c.ContentType = "application/json"
		}
		cs = append(cs, c)
	}

	// Truncated JSON at many points of a valid event.
	full := Valid(id("trunc"))
	for _, cut := range []int{1, 7, 20, 45, 80, 120, 200, len(full) - 30, len(full) - 2, len(full) - 1} {
		add(Case{Name: fmt.Sprintf("truncated at %d", cut), Body: []byte(full[:cut]), Status: 400, WantError: ""})
	}

	// Wrong types, one field at a time: the error names the field.
	for _, w := range []struct{ field, key, raw string }{
		{"id", "id", `12345`},
		{"start_time", "start_time", `1764151200`},
		{"start_time", "start_time", `"yesterday"`},
		{"end_time", "end_time", `true`},
		{"endpoint", "endpoint", `["/v1/chat/completions"]`},
		{"model", "model", `{"uid":"qwen"}`},
		{"user", "user", `42`},
		{"usage", "usage", `"lots"`},
		{"usage.prompt_tokens", "usage", `{"prompt_tokens":"5"}`},
		{"status", "status", `"200"`},
		{"stream", "stream", `"yes"`},
		{"tags", "tags", `{"a":1}`},
		{"metadata", "metadata", `[1,2]`},
		{"source", "source", `"elsewhere"`},
	} {
		add(Case{Name: "wrong type " + w.key + "=" + w.raw, Body: []byte(with(id("type-"+w.field), w.key, w.raw)), Status: 400, WantError: w.field})
	}

	// Missing required fields.
	for _, f := range []string{"id", "start_time", "endpoint", "model"} {
		add(Case{Name: "missing " + f, Body: []byte(with(id("missing-"+f), f, "")), Status: 400, WantError: f})
	}

	// Huge fields.
	add(Case{Name: "huge id", Body: []byte(with(id("huge-id"), "id", `"`+strings.Repeat("x", 10_000)+`"`)), Status: 400, WantError: "id"})
	add(Case{Name: "huge model", Body: []byte(with(id("huge-model"), "model", `"`+strings.Repeat("m", 100_000)+`"`)), Status: 400, WantError: "model"})
	add(Case{Name: "event over the size limit", Body: []byte(with(id("huge-event"), "metadata", `{"blob":"`+strings.Repeat("b", MaxEventBytes)+`"}`)), Status: 400, WantError: "bytes"})
	add(Case{Name: "deep nesting", Body: []byte(with(id("deep"), "metadata", `{"x":`+strings.Repeat("[", 100_000)+strings.Repeat("]", 100_000)+`}`)), Status: 400, WantError: ""})
	add(Case{Name: "ten thousand tags", Body: []byte(with(id("tags"), "tags", `[`+strings.TrimSuffix(strings.Repeat(`"t",`, 10_000), ",")+`]`)), Status: 400, WantError: "tags"})
	add(Case{Name: "body over the request limit", Body: bytes.Repeat([]byte(Valid(id("big"))+"\n"), MaxBodyBytes/len(Valid(id("big")))+10),
		ContentType: "application/x-ndjson", Status: 413, WantError: "limit"})

	// Invalid UTF-8.
	add(Case{Name: "invalid UTF-8 in id", Body: []byte(with(id("utf8"), "id", "\"bad\xff\xfeid\"")), Status: 400, WantError: "UTF-8"})
	add(Case{Name: "invalid UTF-8 in model", Body: []byte(with(id("utf8-model"), "model", "\"q\xc3\x28wen\"")), Status: 400, WantError: "UTF-8"})
	add(Case{Name: "invalid UTF-8 in request", Body: []byte(with(id("utf8-req"), "request", "{\"messages\":[{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}]}")), Status: 400, WantError: "UTF-8"})
	add(Case{Name: "NUL bytes", Body: []byte("{\"id\":\"a\x00b\"}"), Status: 400, WantError: ""})
	add(Case{Name: "byte order mark", Body: append([]byte("\xef\xbb\xbf"), Valid(id("bom"))...), Status: 400, WantError: ""})

	// Compression: bombs and broken streams.
	gzBomb, zsBomb := bombs()
	add(Case{Name: "gzip bomb", ContentEncoding: "gzip", Body: gzBomb, Status: 413, WantError: "limit"})
	add(Case{Name: "zstd bomb", ContentEncoding: "zstd", Body: zsBomb, Status: 413, WantError: "limit"})
	add(Case{Name: "not gzip", ContentEncoding: "gzip", Body: []byte(Valid(id("notgz"))), Status: 400, WantError: "gzip"})
	add(Case{Name: "truncated gzip", ContentEncoding: "gzip", Body: gzipped([]byte(Valid(id("gztrunc"))))[:20], Status: 400, WantError: ""})
	add(Case{Name: "unknown encoding", ContentEncoding: "br", Body: []byte(Valid(id("br"))), Status: 415, WantError: "Content-Encoding"})

	// Wrong content types.
	for _, ct := range []string{"text/plain", "application/xml", "multipart/form-data; boundary=x", "image/png", "application/x-www-form-urlencoded"} {
		add(Case{Name: "content type " + ct, ContentType: ct, Body: []byte(Valid(id("ct"))), Status: 415, WantError: "Content-Type"})
	}

	// Not events at all.
	for i, b := range []string{"", "   \n\t ", "null", "[]", "[1,2,3]", "{}", `"an event"`, "true", "[[]]"} {
		add(Case{Name: fmt.Sprintf("not an event %d %q", i, b), Body: []byte(b), Status: 400, WantError: ""})
	}

	// Mixed batches: the valid events are accepted, the bad ones named.
	good1, good2 := id("mixed-ok-1"), id("mixed-ok-2")
	add(Case{Name: "ndjson with bad lines", ContentType: "application/x-ndjson",
		Body:   []byte(Valid(good1) + "\n{\"id\":\n" + with(id("mixed-bad"), "model", `7`) + "\n" + Valid(good2) + "\n"),
		Status: 202, WantError: "model", ValidIDs: []string{good1, good2}})
	good3 := id("mixed-ok-3")
	add(Case{Name: "array with wrong types", Body: []byte("[" + Valid(good3) + `,{"id":5},"text",null]`),
		Status: 202, WantError: "id", ValidIDs: []string{good3}})
	good4 := id("mixed-ok-4")
	add(Case{Name: "ndjson with invalid UTF-8 line", ContentType: "application/x-ndjson",
		Body:   []byte(Valid(good4) + "\n" + "{\"id\":\"\xff\"}\n"),
		Status: 202, WantError: "", ValidIDs: []string{good4}})
	return cs
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// Bombs are built once per process: compressing hundreds of MiB is the
// slowest part of the corpus.
var (
	bombsOnce            sync.Once
	gzipBomb1, zstdBomb1 []byte
)

func bombs() (gz, zs []byte) {
	bombsOnce.Do(func() {
		gzipBomb1 = gzipBomb(256 << 20)
		zstdBomb1 = zstdBomb(256 << 20)
	})
	return gzipBomb1, zstdBomb1
}

// gzipBomb is n zero bytes, gzip-compressed (about n/1000 bytes).
func gzipBomb(n int) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	chunk := make([]byte, 1<<20)
	for written := 0; written < n; written += len(chunk) {
		_, _ = zw.Write(chunk)
	}
	_ = zw.Close()
	return buf.Bytes()
}

func zstdBomb(n int) []byte {
	var buf bytes.Buffer
	zw, _ := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	chunk := make([]byte, 1<<20)
	for written := 0; written < n; written += len(chunk) {
		_, _ = zw.Write(chunk)
	}
	_ = zw.Close()
	return buf.Bytes()
}
