package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Langfuse checks GET /api/public/health (no auth) and then the project keys
// with GET /api/public/projects (Basic public:secret), which answers with the
// project the keys belong to.
func Langfuse(host, publicKey, secretKey string, client *http.Client) Check {
	return func(ctx context.Context) []Result {
		base := strings.TrimRight(host, "/")
		var health struct {
			Status  string `json:"status"`
			Version string `json:"version"`
		}
		code, body, err := get(ctx, client, base+"/api/public/health", "", "", &health)
		if err != nil {
			return []Result{fail("langfuse", "check langfuse.host (LANGFUSE_HOST) and that langfuse-web is running (docker compose ps langfuse-web)",
				"%s: %v", host, err)}
		}
		if code != http.StatusOK {
			return []Result{fail("langfuse", "langfuse-web cannot reach its databases: check postgres, clickhouse, redis and minio of the Langfuse stack (docker compose logs langfuse-web)",
				"%s/api/public/health: %d %s %s", base, code, health.Status, snippet(body))}
		}
		rs := []Result{ok("langfuse", "%s: status %s, version %s", host, health.Status, health.Version)}

		const label = "langfuse keys"
		if publicKey == "" || secretKey == "" {
			return append(rs, fail(label, "set langfuse.public_key and langfuse.secret_key (LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY) from the project's API keys",
				"langfuse.host is set but a project key is missing"))
		}
		var projects struct {
			Data []struct {
				ID   string `json:"id"`
				Name string `json:"name"`
			} `json:"data"`
		}
		code, body, err = get(ctx, client, base+"/api/public/projects", publicKey, secretKey, &projects)
		switch {
		case err != nil:
			return append(rs, fail(label, "check the network path to Langfuse", "%s/api/public/projects: %v", base, err))
		case code == http.StatusUnauthorized || code == http.StatusForbidden:
			return append(rs, fail(label, "the keys are wrong, revoked or belong to an organization: create a project API key pair in Langfuse (Settings → API Keys) and set LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY",
				"public key %s rejected: %d %s", publicKey, code, snippet(body)))
		case code != http.StatusOK:
			return append(rs, fail(label, "check the langfuse-web log", "%s/api/public/projects: %d %s", base, code, snippet(body)))
		}
		name := "?"
		if len(projects.Data) > 0 {
			name = fmt.Sprintf("%s (%s)", projects.Data[0].Name, projects.Data[0].ID)
		}
		return append(rs, ok(label, "public key %s accepted for project %s", publicKey, name))
	}
}

// get fetches url and decodes a JSON answer into v when it is one.
func get(ctx context.Context, client *http.Client, url, user, pass string, v any) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read answer: %w", err)
	}
	_ = json.Unmarshal(body, v) // an error page leaves v empty; the status says enough
	return resp.StatusCode, body, nil
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
