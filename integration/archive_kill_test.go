package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// TestArchiveKilledMidUpload SIGKILLs the archive worker while an object's
// manifest is stored but its (multipart) data upload is not finished, then
// restarts it: the object is rebuilt from the stream under the same key and
// every call is archived exactly once.
func TestArchiveKilledMidUpload(t *testing.T) {
	e := newArchEnv(t)
	const n = 8_000
	day := archDay(t)
	evs := archEvents(e.run, n, day, 1, 4000, 11) // ~4 KB of incompressible text each
	want := eventRaws(evs)
	e.publish(t, want, func(i int) string { return evs[i].id }, nil)
	last := e.lastSeq(t)
	env := e.env("CALLPIPE_ARCHIVE_FLUSH_BYTES=8MiB", "CALLPIPE_ARCHIVE_PART_SIZE=5MiB", "CALLPIPE_ARCHIVE_MAX_UPLOADS=1",
		"CALLPIPE_ARCHIVE_FLUSH_INTERVAL=2s", "CALLPIPE_ARCHIVE_ACK_WAIT=5s", "CALLPIPE_LOG_LEVEL=info",
		"CALLPIPE_WORKER_LISTEN="+testkit.FreeAddr(t))
	testkit.Binary(t) // build before the clock matters

	w := e.start(t, env, "worker", "--stages", "archive")
	orphan := ""
	deadline := time.Now().Add(time.Minute)
	for orphan == "" && time.Now().Before(deadline) {
		orphan = e.claimedNotStored(t)
	}
	w.Kill()
	if orphan == "" {
		t.Fatal("never saw a manifest without its data object (an upload in progress) within a minute")
	}
	t.Logf("killed while %s was uploading", orphan)

	w2 := e.start(t, env, "worker", "--stages", "archive")
	e.waitArchived(t, 2*time.Minute, last)
	w2.Stop(t, 30*time.Second)
	if !strings.Contains(w2.Out.String(), "rebuilding it from the stream") {
		t.Errorf("restarted worker did not report rebuilding the interrupted object:\n%s", w2.Out.String())
	}
	objs := e.readArchive(t, day, day.Add(time.Hour))
	checkExactlyOnce(t, objs, want)
	found := false
	for _, o := range objs {
		found = found || o.Key == orphan
	}
	if !found {
		t.Errorf("the interrupted object %s was not stored under its key", orphan)
	}
	t.Logf("%d objects", len(objs))
}

// claimedNotStored returns the data key of a manifest whose data object does
// not exist yet, or "".
func (e *archEnv) claimedNotStored(t testing.TB) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	data, manifests := map[string]bool{}, []string{}
	for info := range e.s3.ListObjects(ctx, archBucket, minio.ListObjectsOptions{Prefix: e.prefix + "/", Recursive: true}) {
		if info.Err != nil {
			t.Logf("list: %v", info.Err)
			return ""
		}
		if k, ok := strings.CutSuffix(info.Key, ".manifest.json"); ok {
			manifests = append(manifests, k)
		} else {
			data[strings.TrimSuffix(info.Key, ".ndjson.zst")] = true
		}
	}
	for _, m := range manifests {
		if !data[m] {
			return m + ".ndjson.zst"
		}
	}
	return ""
}
