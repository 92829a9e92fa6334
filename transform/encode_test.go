package transform

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/callpipe/callpipe/schema"
)

func TestAppendCallMatchesMarshal(t *testing.T) {
	n := testNormalizer(t)
	var events [][]byte
	for i := range 3 {
		events = append(events, benchChatEvent(i))
	}
	events = append(events,
		event("x<&>\u2028\"\\\n\t\x01", "/v1/chat/completions", "m", `{"messages":[{"role":"user","content":"a\"b\\c <tag> & \u00e9 \ud83d\ude00 \u0001"}]}`, `{"choices":[{"message":{"content":"ok"}}]}`,
			map[string]any{"metadata": map[string]any{"z": 1, "a": []int{1, 2}, "m": map[string]string{"k": "v"}}, "tags": []string{"t1", "t<2>"},
				"session_id": "s", "batch_id": "b", "source": "batch", "stream": true, "status": 500, "error": "boom"}),
		event("emb", "/v1/embeddings", "bge-x", `{"input":"hi"}`, `{"data":[{"embedding":[1,2]}]}`, nil),
	)
	for _, e := range events {
		c, err := n.Normalize(context.Background(), e)
		if err != nil {
			t.Fatal(err)
		}
		checkEncoding(t, c)
	}
	for _, f := range []float64{0, 1, 1.5e-7, 3.2e-9, 1e21, 123456.789, 0.000001} {
		c := &schema.Call{ID: "f", StartTime: time.Unix(0, 1).UTC(), CostUSD: &f}
		checkEncoding(t, c)
	}
}

func checkEncoding(t *testing.T, c *schema.Call) {
	t.Helper()
	want, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	got := schema.AppendCall(nil, c)
	if !json.Valid(got) {
		t.Fatalf("invalid JSON: %s", got)
	}
	var a, b any
	_ = json.Unmarshal(want, &a)
	_ = json.Unmarshal(got, &b)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("AppendCall differs from json.Marshal:\n got %s\nwant %s", got, want)
	}
	var back schema.Call
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
}
