package config

import (
	"regexp"
	"strings"

	"github.com/callpipe/callpipe/store/settings"
)

// validSettingsKey is an *Error unless key is empty or a settings key.
// The value is never shown: it is a secret.
func validSettingsKey(key string) error {
	if _, err := settings.SealerFromConfig(key); err != nil {
		return &Error{Key: "langfuse.settings_key", Value: "(masked)", Allowed: err.Error()}
	}
	return nil
}

// Sealer is the settings bucket's sealer of langfuse.settings_key; nil when
// it is empty.
func (c *Config) Sealer() *settings.Sealer {
	s, _ := settings.SealerFromConfig(c.Langfuse.SettingsKey) // validated at load
	return s
}

var langfuseEnvRe = regexp.MustCompile(`^[a-z0-9_-]{1,40}$`)

// validLangfuseEnv reports whether Langfuse keeps env as it is (its
// PublicEnvironmentName rules); "" means Langfuse's "default".
func validLangfuseEnv(env string) bool {
	return env == "" || (langfuseEnvRe.MatchString(env) && !strings.HasPrefix(env, "langfuse"))
}
