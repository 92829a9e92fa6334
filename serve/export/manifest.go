package export

import "time"

// ManifestVersion is the layout version of _manifest.json.
const ManifestVersion = 1

// Manifest is _manifest.json: what the export holds and how it was made.
// It is written after every part and before _SUCCESS.
type Manifest struct {
	Version int `json:"manifest_version"`
	// Spec is the job's spec as normalized (every field set but model and
	// user), its fields inline.
	Spec
	// Query is what the source ran (SQL for calls, the object listing for
	// archive); Args are the job's arguments as given.
	Query   string            `json:"query"`
	Args    map[string]string `json:"args"`
	Columns []string          `json:"columns"`
	Rows    int64             `json:"rows"`
	// Skipped counts source records that are not exportable (archive lines
	// that are not JSON events with an id and a start_time).
	Skipped int64  `json:"skipped,omitempty"`
	Bytes   int64  `json:"bytes"`
	Parts   []Part `json:"parts"`
	// Attempts is how many runs it took (more than 1: resumed from a checkpoint).
	Attempts   int       `json:"attempts"`
	Fence      int64     `json:"fence"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
}
