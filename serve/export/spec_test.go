package export

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validSpec() Spec {
	return Spec{From: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC),
		Format: FormatParquet, Dest: "s3://exports/daily/2026-11-26"}
}

func TestSpecNormalizeNamesTheField(t *testing.T) {
	cases := []struct {
		field  string
		modify func(*Spec)
	}{
		{"from", func(s *Spec) { s.From = time.Time{} }},
		{"to", func(s *Spec) { s.To = time.Time{} }},
		{"to", func(s *Spec) { s.To = s.From }},
		{"from", func(s *Spec) { s.From = s.From.Add(time.Millisecond) }},
		{"format", func(s *Spec) { s.Format = "xlsx" }},
		{"source", func(s *Spec) { s.Source = "kafka" }},
		{"compression", func(s *Spec) { s.Compression = "lz4" }},
		{"dest", func(s *Spec) { s.Dest = "exports/daily" }},
		{"dest", func(s *Spec) { s.Dest = "s3://Bad_Bucket/x" }},
		{"dest", func(s *Spec) { s.Dest = "s3://bucket/a//b" }},
		{"job_id", func(s *Spec) { s.JobID = "../../etc" }},
		{"model", func(s *Spec) { s.Model = "a\x00b" }},
	}
	for _, tc := range cases {
		s := validSpec()
		tc.modify(&s)
		err := s.Normalize("zstd")
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.HasPrefix(err.Error(), tc.field+": ") {
			t.Errorf("%+v: error %v, want one naming %s", s, err, tc.field)
		}
	}
}

func TestSpecJobID(t *testing.T) {
	a, b := validSpec(), validSpec()
	if err := a.Normalize("zstd"); err != nil {
		t.Fatal(err)
	}
	b.From = b.From.In(time.FixedZone("x", 3600)) // same instant, other zone
	if err := b.Normalize("zstd"); err != nil {
		t.Fatal(err)
	}
	if a.JobID != b.JobID || !strings.HasPrefix(a.JobID, "exp-") || a.Source != SourceCalls || a.Compression != "zstd" {
		t.Fatalf("ids %s / %s, spec %+v", a.JobID, b.JobID, a)
	}
	for _, change := range []func(*Spec){
		func(s *Spec) { s.Model = "m" }, func(s *Spec) { s.User = "u" }, func(s *Spec) { s.Format = FormatCSV },
		func(s *Spec) { s.Dest += "x" }, func(s *Spec) { s.To = s.To.Add(time.Second) }, func(s *Spec) { s.Compression = "gzip" },
	} {
		c := validSpec()
		change(&c)
		if err := c.Normalize("zstd"); err != nil {
			t.Fatal(err)
		}
		if c.JobID == a.JobID || c.sameWork(&a) {
			t.Errorf("%+v has the id of %+v", c, a)
		}
	}
	given := validSpec()
	given.JobID = "nightly-2026-11-26"
	if err := given.Normalize("zstd"); err != nil || given.JobID != "nightly-2026-11-26" || !given.sameWork(&a) {
		t.Fatalf("given id: %v %+v", err, given)
	}
}

func TestParseDest(t *testing.T) {
	for dest, want := range map[string][2]string{
		"s3://exports":             {"exports", ""},
		"s3://exports/":            {"exports", ""},
		"s3://exports/a/b/":        {"exports", "a/b"},
		"s3://my.bucket-1/x/y.z/w": {"my.bucket-1", "x/y.z/w"},
	} {
		b, p, err := ParseDest(dest)
		if err != nil || b != want[0] || p != want[1] {
			t.Errorf("ParseDest(%q) = %q, %q, %v; want %q, %q", dest, b, p, err, want[0], want[1])
		}
	}
}

func TestParseTime(t *testing.T) {
	want := time.Date(2026, 11, 26, 20, 0, 0, 0, time.UTC)
	for _, v := range []string{"2026-11-26T20:00:00Z", "2026-11-26T21:00:00+01:00", "2026-11-26T20:00", "2026-11-26T20"} {
		got, err := ParseTime("from", v)
		if err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("ParseTime(%q) = %v, %v", v, got, err)
		}
	}
	if d, err := ParseTime("to", "2026-11-26"); err != nil || !d.Equal(want.Truncate(24*time.Hour)) {
		t.Errorf("date: %v %v", d, err)
	}
	if _, err := ParseTime("to", "tomorrow"); err == nil || !strings.HasPrefix(err.Error(), "to: ") {
		t.Errorf("bad time: %v", err)
	}
}
