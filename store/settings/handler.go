package settings

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
)

// LangfuseView is what the API shows: never the secret in clear.
type LangfuseView struct {
	Host           string    `json:"host"`
	PublicKey      string    `json:"public_key"`
	SecretKeySet   bool      `json:"secret_key_set"`
	SecretKeyHint  string    `json:"secret_key_hint,omitempty"`
	ProjectID      string    `json:"project_id,omitempty"`
	Source         string    `json:"source"` // saved or config
	UpdatedAt      time.Time `json:"updated_at,omitzero"`
	ConfigOverride bool      `json:"config_overridden"` // saved settings hide a configured host
	// ConfigHost is the host of the configuration file and environment,
	// shown so that an operator sees what a reset goes back to.
	ConfigHost string `json:"config_host,omitempty"`
}

// Handler serves the Langfuse settings API:
//
//	GET    /api/v1/settings/langfuse       the settings in effect (secret masked)
//	PUT    /api/v1/settings/langfuse       save (an empty secret_key keeps the saved one)
//	DELETE /api/v1/settings/langfuse       forget saved settings: the configuration applies
//	POST   /api/v1/settings/langfuse/test  test the posted settings (empty secret: the saved one)
//
// An empty secret_key stands for the secret in effect only while host and
// public_key stay the same: the secret is never sent to a host it was not
// entered for, so whoever can reach this API cannot redirect it.
//
// Writes take only a JSON body (Content-Type: application/json), so that a
// cross-site HTML form cannot post one; serve's auth decides who may write.
// "Test connection" reaches only what Probe allows and never echoes what
// the tested server answered beyond its status.
type Handler struct {
	Store  *Store
	Config Langfuse // from the configuration file and environment
	Probe  ProbePolicy
}

func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/settings/langfuse", h.get)
	mux.HandleFunc("PUT /api/v1/settings/langfuse", h.put)
	mux.HandleFunc("DELETE /api/v1/settings/langfuse", h.delete)
	mux.HandleFunc("POST /api/v1/settings/langfuse/test", h.test)
	mux.HandleFunc("/api/v1/settings/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "", "no settings route "+r.Method+" "+r.URL.Path)
	})
}

// effective is the saved settings, else the configured ones.
func (h *Handler) effective(r *http.Request) (Langfuse, string, error) {
	saved, ok, err := h.Store.Langfuse(r.Context())
	if err != nil {
		return Langfuse{}, "", err
	}
	if ok {
		return saved, SourceSaved, nil
	}
	return h.Config, SourceConfig, nil
}

func (h *Handler) view(l Langfuse, source string) LangfuseView {
	return LangfuseView{Host: l.Host, PublicKey: l.PublicKey, SecretKeySet: l.SecretKey != "", SecretKeyHint: SecretHint(l.SecretKey),
		ProjectID: l.ProjectID, Source: source, UpdatedAt: l.UpdatedAt,
		ConfigOverride: source == SourceSaved && h.Config.Configured(), ConfigHost: h.Config.Host}
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	l, source, err := h.effective(r)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, h.view(l, source))
}

// decode reads a posted Langfuse and fills an empty secret from the settings
// in effect, so that the dashboard never needs the secret back.
func (h *Handler) decode(w http.ResponseWriter, r *http.Request) (Langfuse, bool) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, "", "Content-Type must be application/json")
		return Langfuse{}, false
	}
	var in Langfuse
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "body", "must be a JSON object with host, public_key, secret_key and optional project_id: "+err.Error())
		return Langfuse{}, false
	}
	in.UpdatedAt = time.Time{}
	if in.SecretKey == "" {
		// A malformed host or key is reported as such, not as a missing secret.
		withSecret := in
		withSecret.SecretKey = "sk-lf-"
		var fe *FieldError
		if err := withSecret.Validate(); errors.As(err, &fe) {
			writeError(w, http.StatusBadRequest, fe.Field, fe.Reason)
			return Langfuse{}, false
		}
		cur, _, err := h.effective(r)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, "", err.Error())
			return Langfuse{}, false
		}
		if cur.SecretKey != "" && (!sameHost(in.Host, cur.Host) || in.PublicKey != cur.PublicKey) {
			writeError(w, http.StatusBadRequest, "secret_key", "required when the host or the public key changes (the secret in effect is only sent to "+cur.Host+" with "+cur.PublicKey+")")
			return Langfuse{}, false
		}
		in.SecretKey = cur.SecretKey
	}
	return in, true
}

func (h *Handler) put(w http.ResponseWriter, r *http.Request) {
	in, ok := h.decode(w, r)
	if !ok {
		return
	}
	if err := h.Store.PutLangfuse(r.Context(), in); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			writeError(w, http.StatusBadRequest, fe.Field, fe.Reason)
			return
		}
		writeError(w, http.StatusServiceUnavailable, "", err.Error())
		return
	}
	saved, _, err := h.Store.Langfuse(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, h.view(saved, SourceSaved))
}

func (h *Handler) delete(w http.ResponseWriter, r *http.Request) {
	if err := h.Store.DeleteLangfuse(r.Context()); err != nil {
		writeError(w, http.StatusServiceUnavailable, "", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, h.view(h.Config, SourceConfig))
}

func (h *Handler) test(w http.ResponseWriter, r *http.Request) {
	in, ok := h.decode(w, r)
	if !ok {
		return
	}
	ctx, cancel := h.Probe.probeContext(r.Context())
	defer cancel()
	writeJSON(w, http.StatusOK, Probe(ctx, h.Probe.Client(), in))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, field, reason string) {
	body := map[string]string{"error": reason}
	if field != "" {
		body["field"] = field
		body["error"] = field + ": " + reason
	}
	writeJSON(w, code, body)
}

// sameHost compares base URLs as the sink uses them (a trailing slash is
// dropped) and ignores the case of scheme and host.
func sameHost(a, b string) bool {
	return strings.EqualFold(strings.TrimRight(a, "/"), strings.TrimRight(b, "/"))
}
