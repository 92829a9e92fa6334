package integration

import (
	"context"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/callpipe/callpipe/integration/internal/testkit"
	"github.com/callpipe/callpipe/serve/export"
)

// exportArgs is a callpipe export of the fixture's range to prefix.
func exportArgs(e *exportEnv, prefix string, extra ...string) []string {
	return append([]string{"export",
		"--from", exportBase.Add(2 * time.Hour).Format(time.RFC3339), "--to", exportBase.Add(46 * time.Hour).Format(time.RFC3339),
		"--format", "parquet", "--dest", "s3://" + e.bucket + "/" + prefix,
	}, extra...)
}

type exportProc struct {
	cmd            *exec.Cmd
	stdout, stderr *testkit.Buffer
	done           chan error
}

func startExport(t *testing.T, e *exportEnv, env []string, args ...string) *exportProc {
	t.Helper()
	p := &exportProc{stdout: &testkit.Buffer{}, stderr: &testkit.Buffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(testkit.Binary(t), args...)
	p.cmd.Env = e.env(env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *exportProc) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		t.Fatalf("export did not finish in %s\nstderr:\n%s", timeout, p.stderr.String())
		return nil
	}
}

// TestExportKilledResumes SIGKILLs `callpipe export` after it committed some
// parts, then runs the same command again: it resumes after the last
// committed part (those objects are not rewritten), and the export ends with
// exactly one _SUCCESS over exactly the source rows. A third run is a no-op.
func TestExportKilledResumes(t *testing.T) {
	e := newExportEnv(t, 1500)
	prefix := "killed"
	env := []string{"CALLPIPE_EXPORT_PART_BYTES=256KiB", "CALLPIPE_EXPORT_PAGE_ROWS=500", "CALLPIPE_EXPORT_LEASE_TTL=2s"}
	p := startExport(t, e, env, exportArgs(e, prefix, "--rate", "400")...)
	testkit.WaitFor(t, time.Minute, "two committed parts", func() (bool, string) {
		return strings.Count(p.stderr.String(), "part committed") >= 2, p.stderr.String()
	})
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := e.s3.StatObject(ctx, e.bucket, prefix+"/"+export.SuccessName, minio.StatObjectOptions{}); err == nil {
		t.Fatal("_SUCCESS exists after the export was killed mid-job")
	}
	jobID := jobIDFrom(t, p.stderr.String())
	st, err := export.LoadState(ctx, e.rdb, e.keyPrefix, jobID)
	if err != nil || st == nil || len(st.Parts) < 2 || st.State != export.StateRunning {
		t.Fatalf("checkpoint after kill: %+v, %v", st, err)
	}
	committed := map[string]string{}
	for _, part := range st.Parts {
		info, err := e.s3.StatObject(ctx, e.bucket, part.Key, minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		committed[part.Key] = info.LastModified.String() + " " + info.ETag
	}

	// the dead process's lease runs out after lease_ttl; until then a rerun
	// reports it
	testkit.WaitFor(t, 10*time.Second, "the killed export's lease to expire", func() (bool, string) {
		n, err := e.rdb.Exists(ctx, e.keyPrefix+"lease:"+jobID).Result()
		return err == nil && n == 0, "lease still held"
	})
	time.Sleep(1100 * time.Millisecond) // object timestamps have second resolution
	p2 := startExport(t, e, env, exportArgs(e, prefix)...)
	t0 := time.Now()
	if err := p2.wait(t, 2*time.Minute); err != nil {
		t.Fatalf("resumed export: %v\nstderr:\n%s", err, p2.stderr.String())
	}
	if !strings.Contains(p2.stdout.String(), "resumed") || !strings.Contains(p2.stderr.String(), "resuming from checkpoint") {
		t.Fatalf("second run did not resume:\nstdout: %s\nstderr: %s", p2.stdout.String(), p2.stderr.String())
	}
	t.Logf("resumed run took %s; stderr:\n%s", time.Since(t0).Round(time.Millisecond), p2.stderr.String())
	m, parts := readExport(t, e, prefix)
	if m.Attempts != 2 {
		t.Fatalf("manifest attempts %d, want 2", m.Attempts)
	}
	for key, was := range committed {
		info, err := e.s3.StatObject(ctx, e.bucket, key, minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if now := info.LastModified.String() + " " + info.ETag; now != was {
			t.Fatalf("committed part %s was rewritten on resume (%s → %s)", key, was, now)
		}
	}
	compareRows(t, "resumed parquet", decodeParts(t, m, parts),
		wantRows(e.calls, exportBase.Add(2*time.Hour), exportBase.Add(46*time.Hour), "", ""))

	p3 := startExport(t, e, env, exportArgs(e, prefix)...)
	if err := p3.wait(t, time.Minute); err != nil {
		t.Fatalf("third run: %v\n%s", err, p3.stderr.String())
	}
	if !strings.Contains(p3.stdout.String(), "already complete") {
		t.Fatalf("third run is not a no-op: %s", p3.stdout.String())
	}
	readExport(t, e, prefix) // still exactly one _SUCCESS
}

// TestExportConcurrentLease starts the same export twice: the second exits
// with an error naming the first as the lease holder; SIGTERM stops the
// first gracefully, leaving a failed (resumable) state and no _SUCCESS.
func TestExportConcurrentLease(t *testing.T) {
	e := newExportEnv(t, 600)
	prefix := "concurrent"
	env := []string{"CALLPIPE_EXPORT_PART_BYTES=256KiB", "CALLPIPE_EXPORT_PAGE_ROWS=50"}
	a := startExport(t, e, env, exportArgs(e, prefix, "--rate", "200")...)
	testkit.WaitFor(t, time.Minute, "first export running", func() (bool, string) {
		return strings.Contains(a.stderr.String(), " rows"), a.stderr.String()
	})
	b := startExport(t, e, env, exportArgs(e, prefix)...)
	err := b.wait(t, time.Minute)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("second export: %v, want exit status 1\nstderr:\n%s", err, b.stderr.String())
	}
	want := "lease held by "
	if s := b.stderr.String(); !strings.Contains(s, "already running") || !strings.Contains(s, want) ||
		!strings.Contains(s, "pid-"+strconv.Itoa(a.cmd.Process.Pid)) {
		t.Fatalf("second export does not name the holder (pid %d):\n%s", a.cmd.Process.Pid, s)
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := a.wait(t, 30*time.Second); err == nil {
		t.Fatal("interrupted export exited 0")
	}
	if !strings.Contains(a.stderr.String(), "rerun the same command to resume") {
		t.Fatalf("interrupted export did not say how to resume:\n%s", a.stderr.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := export.LoadState(ctx, e.rdb, e.keyPrefix, jobIDFrom(t, a.stderr.String()))
	if err != nil || st == nil || st.State != export.StateFailed {
		t.Fatalf("state after SIGTERM: %+v, %v", st, err)
	}
	if n, _ := e.rdb.Exists(ctx, e.keyPrefix+"lease:"+st.ID).Result(); n != 0 {
		t.Fatal("lease not released on SIGTERM")
	}
	if _, err := e.s3.StatObject(ctx, e.bucket, prefix+"/"+export.SuccessName, minio.StatObjectOptions{}); err == nil {
		t.Fatal("_SUCCESS after an interrupted export")
	}
}

// jobIDFrom takes the job id from the first stderr line ("export <id>: ...").
func jobIDFrom(t *testing.T, stderr string) string {
	t.Helper()
	for _, line := range strings.Split(stderr, "\n") {
		if rest, ok := strings.CutPrefix(line, "export "); ok {
			if id, _, ok := strings.Cut(rest, ":"); ok {
				return id
			}
		}
	}
	t.Fatalf("no job id in stderr:\n%s", stderr)
	return ""
}
