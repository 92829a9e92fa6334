package schema

import (
	"sort"
	"strings"
)

// EventField is the FieldError.Field of problems with the event as a whole
// rather than one field: size over the limit, invalid UTF-8, malformed JSON,
// or a top-level value that is not an object.
const EventField = "(event)"

// FieldError is one problem with one field of an event.
//
// Field is a path into the event: a top-level name ("end_time"), a nested
// name ("usage.prompt_tokens", "metadata.team"), an array element
// ("tags[2]"), or EventField. For an unknown top-level field it is the name
// that was sent.
type FieldError struct {
	Field  string
	Reason string
}

// Error returns "field: reason", e.g. "end_time: before start_time".
func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// ValidationError is every problem Decode or Validate found in one event, in
// schema order: fields in the order of the JSON Schema's properties (the
// order of Event's fields), elements of one field in document order, then
// unknown fields in document order. It is never empty.
//
// errors.As(err, &fieldErr) finds the first FieldError.
type ValidationError []*FieldError

// Error joins the problems with "; ".
func (v ValidationError) Error() string {
	switch len(v) {
	case 0:
		return "schema: no errors"
	case 1:
		return v[0].Error()
	}
	var b strings.Builder
	for i, fe := range v {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(fe.Error())
	}
	return b.String()
}

// Unwrap returns the FieldErrors, for errors.Is and errors.As.
func (v ValidationError) Unwrap() []error {
	out := make([]error, len(v))
	for i, fe := range v {
		out[i] = fe
	}
	return out
}

// FieldPaths returns the Field of every FieldError in err, in order. It looks
// through ValidationError, *FieldError, errors.Join and %w wrapping; it
// returns nil for nil and for errors that carry no FieldError.
func FieldPaths(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		switch x := err.(type) {
		case nil:
		case ValidationError:
			for _, fe := range x {
				out = append(out, fe.Field)
			}
		case *FieldError:
			out = append(out, x.Field)
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(x.Unwrap())
		}
	}
	walk(err)
	return out
}

// maxErrorsPerField caps the errors kept for one top-level field (a tags
// array of a million numbers yields ten errors, not a million). Unknown
// fields share one cap. The cap is per field, so the first error in schema
// order is never dropped.
const maxErrorsPerField = 10

// unknownOrder sorts unknown-field errors after every known field.
const unknownOrder = numFields

// errList collects FieldErrors with their schema-order key.
type errList struct {
	items  []keyedError
	counts [numFields + 1]uint8
	bad    uint32 // bit f: field f had an error; later checks skip it
}

type keyedError struct {
	order int
	fe    *FieldError
}

func (l *errList) add(order int, field, reason string) {
	if order < numFields {
		l.bad |= 1 << order
	}
	if l.counts[order] >= maxErrorsPerField {
		return
	}
	l.counts[order]++
	l.items = append(l.items, keyedError{order, &FieldError{Field: field, Reason: reason}})
}

func (l *errList) failed(f int) bool { return l.bad&(1<<f) != 0 }

// err returns the collected errors sorted in schema order, or nil.
func (l *errList) err() error {
	if len(l.items) == 0 {
		return nil
	}
	sort.SliceStable(l.items, func(i, j int) bool { return l.items[i].order < l.items[j].order })
	v := make(ValidationError, len(l.items))
	for i, it := range l.items {
		v[i] = it.fe
	}
	return v
}

func eventError(reason string) error {
	return ValidationError{{Field: EventField, Reason: reason}}
}
