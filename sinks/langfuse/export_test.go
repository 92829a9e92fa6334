package langfuse

// AppendSpan exposes appendSpan to the external tests.
var AppendSpan = appendSpan
