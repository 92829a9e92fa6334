package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/integration/internal/harness"
)

// unique returns a lowercase name fragment that is unique per call (and per run).
func unique(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x%s", time.Now().UnixNano(), hex.EncodeToString(b))
}

func TestSmokeNATSJetStreamDedup(t *testing.T) {
	u := harness.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	nc, err := nats.Connect(u, nats.Name("callpipe-smoke"), nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", u, err)
	}
	t.Cleanup(nc.Close) // registered first: runs after the stream is deleted
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	id := unique(t)
	name, subject := "SMOKE_"+id, "smoke."+id
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{subject},
		Storage:    jetstream.FileStorage,
		Duplicates: time.Minute,
		MaxAge:     time.Hour,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, name); err != nil {
			t.Errorf("delete stream %s: %v", name, err)
		}
	})

	ack1, err := js.Publish(ctx, subject, []byte("first"), jetstream.WithMsgID("msg-"+id))
	if err != nil {
		t.Fatalf("publish 1: %v", err)
	}
	ack2, err := js.Publish(ctx, subject, []byte("second"), jetstream.WithMsgID("msg-"+id))
	if err != nil {
		t.Fatalf("publish 2: %v", err)
	}
	if ack1.Duplicate || !ack2.Duplicate {
		t.Errorf("duplicate flags: first=%v second=%v, want false/true", ack1.Duplicate, ack2.Duplicate)
	}
	if ack1.Stream != name || ack2.Sequence != ack1.Sequence {
		t.Errorf("acks: %+v %+v", ack1, ack2)
	}

	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1 (Nats-Msg-Id dedup)", info.State.Msgs)
	}
	if info.Config.Storage != jetstream.FileStorage {
		t.Errorf("storage = %v, want file", info.Config.Storage)
	}
	msg, err := stream.GetMsg(ctx, ack1.Sequence)
	if err != nil {
		t.Fatalf("get msg: %v", err)
	}
	if string(msg.Data) != "first" || msg.Header.Get(jetstream.MsgIDHeader) != "msg-"+id {
		t.Errorf("stored message = %q (id %q), want %q (id %q)",
			msg.Data, msg.Header.Get(jetstream.MsgIDHeader), "first", "msg-"+id)
	}
}

func TestSmokeClickHouseBatchInsert(t *testing.T) {
	addr := harness.ClickHouse(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{addr.Native},
		Auth:        clickhouse.Auth{Database: "default", Username: "default"},
		DialTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatalf("open %s: %v", addr.Native, err)
	}
	t.Cleanup(func() { _ = conn.Close() }) // registered first: runs after the drop
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("ping %s: %v", addr.Native, err)
	}

	db := "callpipe_smoke_" + unique(t)
	if err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
			t.Errorf("drop database %s: %v", db, err)
		}
	})
	table := db + ".events"
	if err := conn.Exec(ctx, `CREATE TABLE `+table+` (
		id   UInt64,
		name String,
		kind LowCardinality(String),
		ts   DateTime('UTC')
	) ENGINE = MergeTree ORDER BY id`); err != nil {
		t.Fatalf("create table: %v", err)
	}

	const rows = 1000
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+table)
	if err != nil {
		t.Fatalf("prepare batch: %v", err)
	}
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	kinds := []string{"llm", "tool", "span"}
	var wantSum uint64
	for i := range rows {
		if err := batch.Append(uint64(i), fmt.Sprintf("event-%d", i), kinds[i%len(kinds)], base.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("append row %d: %v", i, err)
		}
		wantSum += uint64(i)
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("send batch: %v", err)
	}

	var count, sum uint64
	var maxTS time.Time
	if err := conn.QueryRow(ctx, "SELECT count(), sum(id), max(ts) FROM "+table).Scan(&count, &sum, &maxTS); err != nil {
		t.Fatalf("select: %v", err)
	}
	if count != rows || sum != wantSum {
		t.Errorf("count()=%d sum(id)=%d, want %d and %d", count, sum, rows, wantSum)
	}
	if want := base.Add((rows - 1) * time.Second); !maxTS.Equal(want) {
		t.Errorf("max(ts) = %v, want %v", maxTS, want)
	}
	var llm uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+table+" WHERE kind = 'llm'").Scan(&llm); err != nil {
		t.Fatalf("select by kind: %v", err)
	}
	if llm != (rows+2)/3 {
		t.Errorf("count(kind='llm') = %d, want %d", llm, (rows+2)/3)
	}

	// The HTTP interface sees the same data.
	q := url.Values{"query": {"SELECT count() FROM " + table}}
	resp, err := http.Get("http://" + addr.HTTP + "/?" + q.Encode())
	if err != nil {
		t.Fatalf("http query: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != fmt.Sprint(rows) {
		t.Errorf("http count: status %d body %q err %v, want %d", resp.StatusCode, body, err, rows)
	}

	if err := conn.Exec(ctx, "DROP DATABASE "+db); err != nil {
		t.Fatalf("drop database: %v", err)
	}
}

func TestSmokeS3PutGet(t *testing.T) {
	cfg := harness.S3(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	mc, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: cfg.UseSSL,
	})
	if err != nil {
		t.Fatal(err)
	}
	bucket := "callpipe-smoke-" + unique(t)
	if err := mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s at %s: %v", bucket, cfg.Endpoint, err)
	}
	key := "traces/2026/01/02/smoke.bin"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = mc.RemoveObject(ctx, bucket, key, minio.RemoveObjectOptions{})
		if err := mc.RemoveBucket(ctx, bucket); err != nil {
			t.Errorf("remove bucket %s: %v", bucket, err)
		}
	})

	data := make([]byte, 256<<10)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if _, err := mc.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream"}); err != nil {
		t.Fatalf("put object: %v", err)
	}
	obj, err := mc.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get object: %v", err)
	}
	got, err := io.ReadAll(obj)
	obj.Close()
	if err != nil {
		t.Fatalf("read object: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("object read back differs: got %d bytes, want %d", len(got), len(data))
	}
	if err := mc.RemoveObject(ctx, bucket, key, minio.RemoveObjectOptions{}); err != nil {
		t.Fatalf("remove object: %v", err)
	}
	if _, err := mc.StatObject(ctx, bucket, key, minio.StatObjectOptions{}); minio.ToErrorResponse(err).Code != "NoSuchKey" {
		t.Errorf("stat after remove: %v, want NoSuchKey", err)
	}
}

func TestSmokeRedisSetNXPipeline(t *testing.T) {
	addr := harness.Redis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rdb.Close() }) // registered first: runs after the Del
	id := unique(t)
	key, counter := "callpipe:smoke:"+id, "callpipe:smoke:"+id+":n"
	t.Cleanup(func() {
		_ = rdb.Del(context.Background(), key, counter).Err()
	})

	ok, err := rdb.SetNX(ctx, key, "first", 30*time.Second).Result()
	if err != nil || !ok {
		t.Fatalf("first SET NX EX: ok=%v err=%v, want true", ok, err)
	}
	ok, err = rdb.SetNX(ctx, key, "second", 30*time.Second).Result()
	if err != nil || ok {
		t.Fatalf("second SET NX EX: ok=%v err=%v, want false", ok, err)
	}
	if v, err := rdb.Get(ctx, key).Result(); err != nil || v != "first" {
		t.Errorf("GET = %q, %v; want \"first\"", v, err)
	}
	if ttl, err := rdb.TTL(ctx, key).Result(); err != nil || ttl <= 0 || ttl > 30*time.Second {
		t.Errorf("TTL = %v, %v; want (0, 30s]", ttl, err)
	}

	pipe := rdb.Pipeline()
	incr := pipe.Incr(ctx, counter)
	incrBy := pipe.IncrBy(ctx, counter, 41)
	expire := pipe.Expire(ctx, counter, time.Minute)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	if incr.Val() != 1 || incrBy.Val() != 42 || !expire.Val() {
		t.Errorf("pipeline results: incr=%d incrby=%d expire=%v, want 1, 42, true", incr.Val(), incrBy.Val(), expire.Val())
	}
	if n, err := rdb.Get(ctx, counter).Int(); err != nil || n != 42 {
		t.Errorf("counter = %d, %v; want 42", n, err)
	}
}
