//go:build race

package integration

// lfRace: the race detector slows the 50,000-call run about tenfold, so
// under -race TestLangfuseSinkThroughNATS sends 10,000 unless
// CALLPIPE_LANGFUSE_IT_CALLS says otherwise.
const lfRace = true
