// Package textout writes lists as callpipe's commands print them: one JSON
// object per line (--json), or a table whose columns are two spaces apart.
package textout

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// JSONLines writes each item as one JSON object per line.
func JSONLines[T any](w io.Writer, items []T) error {
	enc := json.NewEncoder(w)
	for _, it := range items {
		if err := enc.Encode(it); err != nil {
			return err
		}
	}
	return nil
}

// Table starts a table on w with its header line (columns separated by
// tabs); write the rows the same way, then Flush.
func Table(w io.Writer, header string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	return tw
}

// JSONIndent writes v as JSON indented by two spaces, for a person to read.
func JSONIndent(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
