package export

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Handler serves the export jobs API:
//
//	POST /api/v1/exports       body: Spec as JSON (from/to RFC 3339) → 202 {"id", "state", "status_url"}
//	                           (200 when the job already succeeded; 400 {"error", "field"} for bad input)
//	GET  /api/v1/exports/{id}  → 200 Status, 404 when the job is unknown
//
// A POSTed job runs in this process in the background. Every replica of
// `callpipe serve` can take the same request: the job id comes from the
// arguments and the lease lets one replica run it; the others answer with
// the state the runner records in Redis.
type Handler struct {
	runner *Runner
	log    *slog.Logger
	mux    *http.ServeMux

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Status is the answer of GET /api/v1/exports/{id}.
type Status struct {
	ID       string    `json:"id"`
	State    string    `json:"state"`
	Spec     Spec      `json:"spec"`
	Progress Progress  `json:"progress"`
	Parts    int       `json:"parts"`
	Attempts int       `json:"attempts"`
	Error    string    `json:"error,omitempty"`
	Manifest *Manifest `json:"manifest,omitempty"`
	// Holder is the process running the job, while one does.
	Holder string `json:"holder,omitempty"`
}

// NewHandler returns the API over runner. Jobs it starts stop when Shutdown
// is called (they resume from their checkpoint on the next POST).
func NewHandler(runner *Runner, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Handler{runner: runner, log: log, mux: http.NewServeMux(), ctx: ctx, cancel: cancel}
	h.mux.HandleFunc("POST /api/v1/exports", h.create)
	h.mux.HandleFunc("GET /api/v1/exports/{id}", h.get)
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Shutdown stops the jobs this handler runs (each records its checkpoint)
// and waits for them, at most until ctx ends.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.cancel()
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("export handler: jobs still stopping: %w", ctx.Err())
	}
}

type apiError struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// request is the POST body; times are strings so that errors name the field.
type request struct {
	From        string `json:"from"`
	To          string `json:"to"`
	Model       string `json:"model"`
	User        string `json:"user"`
	Format      string `json:"format"`
	Dest        string `json:"dest"`
	Source      string `json:"source"`
	Compression string `json:"compression"`
	JobID       string `json:"job_id"`
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	var req request
	if err := dec.Decode(&req); err != nil {
		field := ""
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field = te.Field
		} else if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			field = strings.Trim(f, `"`)
		}
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body: " + err.Error(), Field: field})
		return
	}
	spec := Spec{Model: req.Model, User: req.User, Format: req.Format, Dest: req.Dest, Source: req.Source,
		Compression: req.Compression, JobID: req.JobID}
	var err error
	if spec.From, err = ParseTime("from", req.From); err == nil {
		spec.To, err = ParseTime("to", req.To)
	}
	if err == nil {
		err = spec.Normalize(h.runner.cfg().Compression)
	}
	if err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			writeJSON(w, http.StatusBadRequest, apiError{Error: fe.Error(), Field: fe.Field})
			return
		}
		writeJSON(w, http.StatusBadRequest, apiError{Error: err.Error()})
		return
	}
	c := h.runner.cfg()
	st, err := queueState(r.Context(), h.runner.Redis, c.KeyPrefix, spec, c.StateTTL)
	if err != nil {
		h.log.Error("export api: queue", "job", spec.JobID, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: err.Error()})
		return
	}
	if !st.Spec.sameWork(&spec) {
		writeJSON(w, http.StatusConflict, apiError{Error: fmt.Sprintf("job_id %q is already used by an export with other arguments", spec.JobID), Field: "job_id"})
		return
	}
	body := map[string]string{"id": spec.JobID, "state": st.State, "status_url": "/api/v1/exports/" + spec.JobID}
	if st.State == StateSucceeded {
		writeJSON(w, http.StatusOK, body)
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.runJob(spec)
	}()
	writeJSON(w, http.StatusAccepted, body)
}

// runJob runs spec; a job another replica holds is left to it.
func (h *Handler) runJob(spec Spec) {
	res, err := h.runner.Run(h.ctx, spec, RunOptions{})
	var held *LeaseHeldError
	switch {
	case errors.As(err, &held):
		h.log.Info("export api: job runs elsewhere", "job", spec.JobID, "holder", held.Holder)
	case err != nil:
		h.log.Error("export api: job failed", "job", spec.JobID, "err", err)
	case res.AlreadyDone:
		h.log.Info("export api: job already complete", "job", spec.JobID)
	default:
		h.log.Info("export api: job done", "job", spec.JobID, "rows", res.Manifest.Rows)
	}
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !jobIDPattern.MatchString(id) {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "id: not a job id", Field: "id"})
		return
	}
	c := h.runner.cfg()
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	st, err := LoadState(ctx, h.runner.Redis, c.KeyPrefix, id)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: err.Error()})
		return
	}
	if st == nil {
		writeJSON(w, http.StatusNotFound, apiError{Error: "no export job " + id})
		return
	}
	out := Status{ID: st.ID, State: st.State, Spec: st.Spec, Progress: st.Progress, Parts: len(st.Parts),
		Attempts: st.Attempts, Error: st.Error, Manifest: st.Manifest}
	if held, err := readLease(ctx, h.runner.Redis, c.KeyPrefix, id); err == nil && held != nil {
		out.Holder = held.Holder
	} else if st.State == StateRunning && err == nil {
		// the state says running but nobody holds the lease: the runner
		// finished without recording it, or died; S3 tells which
		if m, cerr := h.runner.completedManifest(ctx, st.Spec); cerr == nil && m != nil {
			out.State, out.Manifest = StateSucceeded, m
		} else {
			out.State = StateFailed
			out.Error = "the process running the job stopped without finishing; POST it again to resume"
		}
	}
	writeJSON(w, http.StatusOK, out)
}
