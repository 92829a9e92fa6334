package transform

import (
	"fmt"
	"io"
	"time"

	"github.com/callpipe/callpipe/internal/textout"
)

// WriteUsers writes the registered keys as `callpipe users ls` shows them: a
// table (user, name, key prefix, hash, creation minute), or one JSON object
// per line when asJSON.
func WriteUsers(w io.Writer, recs []UserRecord, asJSON bool) error {
	if asJSON {
		return textout.JSONLines(w, recs)
	}
	tw := textout.Table(w, "USER\tNAME\tKEY PREFIX\tSHA256\tCREATED")
	for _, r := range recs {
		created := r.Created
		if t, err := time.Parse(time.RFC3339, r.Created); err == nil {
			created = t.Format("2006-01-02 15:04")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.User, r.Name, r.Prefix, r.KeyHash, created)
	}
	return tw.Flush()
}
