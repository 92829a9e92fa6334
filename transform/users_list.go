package transform

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/callpipe/callpipe/internal/textout"
	"github.com/callpipe/callpipe/schema"
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

// UserOf is the user id ev is attributed to, as normalize resolves it: its
// explicit user, else its API key's owner (replay's --user filter).
func (r *UserResolver) UserOf(ctx context.Context, ev *schema.Event) string {
	u, _ := r.Resolve(ctx, ev.User, ev.APIKeyHash)
	return u
}

// ReadAPIKey is the first line of r, without surrounding white space; more
// non-blank lines are refused (one key per file).
func ReadAPIKey(r io.Reader) (string, error) {
	sc := bufio.NewScanner(io.LimitReader(r, 64<<10))
	var key string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
		case key == "":
			key = line
		default:
			return "", errors.New("holds more than one line: give one key")
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if key == "" {
		return "", errors.New("is empty")
	}
	return key, nil
}
