package langfuse

import (
	"bytes"
	"io"
	"testing"
)

// A request body buffer returns to the free list only when its WriteBatch
// let go of it and every request that sent it closed its body, however
// many times net/http asked for the body.
func TestBodyBufReusedOnlyAfterEveryClose(t *testing.T) {
	o := NewOutput(OutputConfig{Host: "http://x"})
	bb := o.takeBody(64)
	bb.b = append(bb.b, "payload"...)
	r1 := bb.reader(bb.b)
	r2 := bb.reader(bb.b) // GetBody for a resend
	bb.release()          // WriteBatch returned
	if len(o.bodies) != 0 {
		t.Fatal("buffer freed while two requests still read it")
	}
	if got, _ := io.ReadAll(r1); !bytes.Equal(got, []byte("payload")) {
		t.Fatalf("body %q", got)
	}
	_ = r1.Close()
	_ = r1.Close() // a second close does not release twice
	if len(o.bodies) != 0 {
		t.Fatal("buffer freed while a resend still reads it")
	}
	_ = r2.Close()
	if len(o.bodies) != 1 {
		t.Fatal("buffer not freed after every close")
	}
	if again := o.takeBody(32); again != bb || len(again.b) != 0 || again.refs.Load() != 1 {
		t.Fatal("free buffer not reused empty")
	}
	if big := o.takeBody(1 << 20); cap(big.b) < 1<<20 {
		t.Fatal("a new buffer smaller than asked")
	}
}
