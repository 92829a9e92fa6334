package integration

import (
	"os"
	"testing"

	"github.com/callpipe/callpipe/store/settings"
)

// testSettingsKey seals the Langfuse secret keys the tests save in the
// settings bucket. It is in the environment of every callpipe process the
// tests start (unless a test overrides it), as a deployment gives one key to
// serve and every langfuse worker.
const testSettingsKey = "Y2FsbHBpcGUtaW50ZWdyYXRpb24tdGVzdHMta2V5ISE=" // 32 bytes, base64

func TestMain(m *testing.M) {
	if os.Getenv("CALLPIPE_LANGFUSE_SETTINGS_KEY") == "" {
		_ = os.Setenv("CALLPIPE_LANGFUSE_SETTINGS_KEY", testSettingsKey)
	}
	os.Exit(m.Run())
}

// itSealer is the sealer of the settings key the tests' processes use.
func itSealer(t testing.TB) *settings.Sealer {
	t.Helper()
	s, err := settings.SealerFromConfig(os.Getenv("CALLPIPE_LANGFUSE_SETTINGS_KEY"))
	if err != nil || s == nil {
		t.Fatalf("settings key of the tests: %v", err)
	}
	return s
}
