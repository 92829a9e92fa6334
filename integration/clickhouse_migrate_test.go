package integration

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
	chsink "github.com/callpipe/callpipe/sinks/clickhouse"
	"github.com/callpipe/callpipe/store/callsdb"
)

func TestClickHouseMigrateTwiceIsNoop(t *testing.T) {
	out, db := chTestDB(t) // first run applied everything
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	migs, err := callsdb.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	m := &callsdb.Migrator{Conn: out.Conn(), Database: db}
	applied, err := m.Applied(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != len(migs) {
		t.Fatalf("after the first run %d migrations recorded, want %d", len(applied), len(migs))
	}
	for i := 0; i < 2; i++ {
		done, err := m.Up(ctx)
		if err != nil {
			t.Fatalf("re-run %d: %v", i+1, err)
		}
		if len(done) != 0 {
			t.Fatalf("re-run %d applied %v, want nothing", i+1, done)
		}
	}
	var records uint64
	if err := out.Conn().QueryRow(ctx, "SELECT toUInt64(count()) FROM "+db+".schema_migrations").Scan(&records); err != nil {
		t.Fatal(err)
	}
	if records != uint64(len(migs)) {
		t.Fatalf("schema_migrations has %d rows, want %d (a re-run must not record again)", records, len(migs))
	}
	for _, tbl := range []string{"calls", "calls_by_user", "calls_by_user_mv", "usage_rollup", "usage_rollup_by_user", "usage_rollup_user_copy", "usage_rollup_by_model", "usage_seals", "usage_dirty_hours",
		"-usage_day_model_user", "-usage_hour_model", "-usage_day_model_user_mv", "-usage_hour_model_mv"} {
		want := uint64(1)
		if strings.HasPrefix(tbl, "-") { // 0002's ledgers, replaced by 0003
			tbl, want = tbl[1:], 0
		}
		var n uint64
		if err := out.Conn().QueryRow(ctx, "SELECT toUInt64(count()) FROM system.tables WHERE database = '"+db+"' AND name = '"+tbl+"'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Fatalf("table %s.%s: %d, want %d", db, tbl, n, want)
		}
	}
}

func TestClickHouseMigrateConcurrent(t *testing.T) {
	addr := harness.ClickHouse(t)
	migs, err := callsdb.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 3; round++ {
		db := "callpipe_test_" + testkit.RandomHex(t, 5)
		const replicas = 4
		outs := make([]*chsink.Output, replicas)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		for i := range outs {
			outs[i] = chsink.NewOutput(chsink.OutputConfig{Config: callsdb.Config{Addr: addr.Native, Database: db, User: "default"}})
			if err := outs[i].Connect(ctx); err != nil {
				t.Fatal(err)
			}
		}
		start := make(chan struct{})
		errs := make([]error, replicas)
		var wg sync.WaitGroup
		for i := range outs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = (&callsdb.Migrator{Conn: outs[i].Conn(), Database: db}).Up(ctx)
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d: migrator %d: %v", round, i, err)
			}
		}
		applied, err := (&callsdb.Migrator{Conn: outs[0].Conn(), Database: db}).Applied(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(applied) != len(migs) {
			t.Errorf("round %d: %d versions recorded, want %d", round, len(applied), len(migs))
		}
		// and the schema works: a later migrator is a no-op
		if done, err := (&callsdb.Migrator{Conn: outs[1].Conn(), Database: db}).Up(ctx); err != nil || len(done) != 0 {
			t.Errorf("round %d: re-run after the race: applied %v, err %v", round, done, err)
		}
		chDropDB(t, outs[0], db)
		for _, o := range outs {
			_ = o.Close()
		}
		cancel()
		if t.Failed() {
			return
		}
	}
}
