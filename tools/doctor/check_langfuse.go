package doctor

import (
	"context"
	"net/http"

	"github.com/callpipe/callpipe/store/settings"
)

// Langfuse checks GET /api/public/health (no auth) and then the project keys
// with GET /api/public/projects (Basic public:secret), which answers with the
// project the keys belong to — the same probe as the dashboard's "Test
// connection" (settings.Health, settings.Keys), with a fix for each failure.
func Langfuse(host, publicKey, secretKey string, client *http.Client) Check {
	return func(ctx context.Context) []Result {
		version, failed := settings.Health(ctx, client, host)
		if failed != nil {
			fix := "check langfuse.host (LANGFUSE_HOST) and that langfuse-web is running (docker compose ps langfuse-web)"
			switch failed.Stage {
			case settings.ProbeTLS:
				fix = "use the scheme Langfuse serves (http:// or https://) and a certificate the host trusts (langfuse.tls)"
			case settings.ProbeNotLangfuse:
				fix = "langfuse.host must be Langfuse's base URL; if it is, langfuse-web cannot reach its databases: check postgres, clickhouse, redis and minio of the Langfuse stack (docker compose logs langfuse-web)"
			}
			return []Result{fail("langfuse", fix, "%s", failed.Message)}
		}
		rs := []Result{ok("langfuse", "%s: version %s", host, version)}

		const label = "langfuse keys"
		if publicKey == "" || secretKey == "" {
			return append(rs, fail(label, "set langfuse.public_key and langfuse.secret_key (LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY) from the project's API keys",
				"langfuse.host is set but a project key is missing"))
		}
		r := settings.Keys(ctx, client, settings.Langfuse{Host: host, PublicKey: publicKey, SecretKey: secretKey}, version)
		switch r.Stage {
		case settings.ProbeOK:
			return append(rs, ok(label, "public key %s accepted for project %s (%s)", publicKey, r.ProjectName, r.ProjectID))
		case settings.ProbeAuth:
			return append(rs, fail(label, "the keys are wrong, revoked or belong to an organization: create a project API key pair in Langfuse (Settings → API Keys) and set LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY",
				"%s", r.Message))
		default:
			return append(rs, fail(label, "check the network path to Langfuse and the langfuse-web log", "%s", r.Message))
		}
	}
}
