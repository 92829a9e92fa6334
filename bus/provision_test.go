package bus

import "testing"

func TestBatchPublishSupported(t *testing.T) {
	cases := map[string]bool{
		"2.15.2":       true,
		"2.14.0":       true,
		"v2.14.1":      true,
		"2.14-beta.1":  true,
		"3.0.0":        true,
		"2.12.3":       false,
		"2.13.9":       false,
		"2.9.25":       false,
		"1.20.0":       false,
		"":             false,
		"2":            false,
		"x.y.z":        false,
		"2.1x.0":       false,
		"2.14.0-RC.1":  true,
		"2.10.0-beta":  false,
		"10.0.0-local": true,
	}
	for v, want := range cases {
		if got := BatchPublishSupported(v); got != want {
			t.Errorf("BatchPublishSupported(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestCallsStreamConfigLeavesBatchingToEnsureStreams(t *testing.T) {
	// the normalized stream is derived from this config and must not inherit
	// allow_batched; EnsureStreams adds it for CALLPIPE_CALLS only
	if CallsStreamConfig(DefaultStreamOptions()).AllowBatchPublish {
		t.Fatal("CallsStreamConfig sets AllowBatchPublish")
	}
}
