package transform

import (
	"bytes"
	"encoding/json"
	"testing"
)

// appendOutMessage and appendMessages write exactly what json.Marshal
// writes for every shape extract builds.
func TestAppendOutMessage(t *testing.T) {
	parts, _ := contentOf(json.RawMessage(`[{"type":"text","text":"a <b> & c"},{"type":"image_url","image_url":{"url":"https://x/y.png"}},` +
		`{"type":"tool_use","name":"f","input":{"q":1}},{"type":"tool_result","tool_use_id":"t1","content":"ok"}]`))
	msgs := []outMessage{
		{Role: "user", Content: textContent("hello")},
		{Role: "assistant"},
		{Role: "assistant", Content: textContent("")},
		{Role: "system", Content: textContent("quotes \" back\\slash \n\t <html> & \u2028 日本 \x01")},
		{Role: "user", Content: parts, Name: "bob"},
		{Role: "assistant", Content: textContent("x"), ReasoningContent: "think <first>",
			ToolCalls: []outToolCall{{ID: "call_1", Type: "function", Function: outFunction{Name: "get", Arguments: `{"a":"<1>"}`}},
				{Type: "function", Function: outFunction{Name: "", Arguments: ""}}}},
		{Role: "tool", Content: textContent("42"), ToolCallID: "call_1"},
	}
	for i := range msgs {
		want, err := json.Marshal(marshalled(msgs[i]))
		if err != nil {
			t.Fatal(err)
		}
		if got := appendOutMessage([]byte("x"), &msgs[i]); !bytes.Equal(got[1:], want) {
			t.Errorf("message %d:\n got %s\nwant %s", i, got[1:], want)
		}
		if got, _ := json.Marshal(msgs[i]); !bytes.Equal(got, want) {
			t.Errorf("message %d by json.Marshal:\n got %s\nwant %s", i, got, want)
		}
	}
	for _, list := range [][]outMessage{msgs, msgs[:1], {}} {
		ref := make([]any, len(list))
		for i, m := range list {
			ref[i] = marshalled(m)
		}
		want, _ := json.Marshal(ref)
		if got := appendMessages(nil, list); !bytes.Equal(got, want) {
			t.Errorf("messages:\n got %s\nwant %s", got, want)
		}
	}
}

// marshalled is m as json.Marshal wrote it when its content was an
// interface holding nil, a string or the parts.
func marshalled(m outMessage) any {
	var content any
	switch m.Content.kind {
	case contentText:
		content = m.Content.text
	case contentParts:
		content = m.Content.parts
	}
	return struct {
		Role             string        `json:"role"`
		Content          any           `json:"content,omitempty"`
		ReasoningContent string        `json:"reasoning_content,omitempty"`
		Name             string        `json:"name,omitempty"`
		ToolCalls        []outToolCall `json:"tool_calls,omitempty"`
		ToolCallID       string        `json:"tool_call_id,omitempty"`
	}{m.Role, content, m.ReasoningContent, m.Name, m.ToolCalls, m.ToolCallID}
}

// Choices are written as one message, or a list of them when there are
// several, as json.Marshal of the list would.
func TestChoicesOutput(t *testing.T) {
	a, b := "first <a>", "second"
	var x extracted
	x.choices([]respChoice{{Message: &respMessage{Content: json.RawMessage(`"` + a + `"`)}}, {Text: &b}})
	want, _ := json.Marshal([]any{marshalled(outMessage{Role: "assistant", Content: textContent(a)}), b})
	if !bytes.Equal(x.output, want) {
		t.Fatalf("two choices:\n got %s\nwant %s", x.output, want)
	}
	if x.outputText != a+"\n"+b {
		t.Fatalf("text %q", x.outputText)
	}
	x = extracted{}
	x.choices([]respChoice{{Text: &b}})
	if want, _ := json.Marshal(b); !bytes.Equal(x.output, want) {
		t.Fatalf("one completion choice: got %s, want %s", x.output, want)
	}
	x = extracted{}
	x.choices([]respChoice{{}})
	if x.output != nil {
		t.Fatalf("no message: got %s", x.output)
	}
}
