package config

import (
	"regexp"
	"strings"
)

var langfuseEnvRe = regexp.MustCompile(`^[a-z0-9_-]{1,40}$`)

// validLangfuseEnv reports whether Langfuse keeps env as it is (its
// PublicEnvironmentName rules); "" means Langfuse's "default".
func validLangfuseEnv(env string) bool {
	return env == "" || (langfuseEnvRe.MatchString(env) && !strings.HasPrefix(env, "langfuse"))
}
