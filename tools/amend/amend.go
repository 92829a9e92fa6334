// Package amend corrects calls already stored in ClickHouse: it prices them
// again (`callpipe prices reprice`) or resolves the users of calls stored as
// unresolved (`callpipe users reresolve`), and republishes the corrected
// calls as a replay job on CALLPIPE_NORMALIZED. The clickhouse stage stores
// them as newer copies, marking their hours dirty so the rollups follow,
// and Langfuse gets the corrected trace.
package amend

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/schema"
	"github.com/callpipe/callpipe/store/callsdb"
	"github.com/callpipe/callpipe/transform"
)

// JobID names a correction run: kind and the start time to the second.
func JobID(kind string, now time.Time) string {
	return kind + "-" + now.UTC().Format("20060102T150405")
}

// Job is one correction run over the stored calls of [From, To): it reads
// them from Database on Conn, republishes the corrected ones as replay job
// ID on JS (nil: a dry run that counts only) and prints what it did to Out.
type Job struct {
	Conn     driver.Conn
	Database string
	From, To time.Time
	JS       jetstream.JetStream
	ID       string
	Out      io.Writer
}

// NewJob is a Job of kind (reprice, reresolve) started now; js nil is a
// dry run.
func NewJob(kind string, conn driver.Conn, database string, from, to time.Time, js jetstream.JetStream, out io.Writer) Job {
	return Job{Conn: conn, Database: database, From: from, To: to, JS: js, ID: JobID(kind, time.Now()), Out: out}
}

// rangeText is the job's range as the commands print it.
func (j Job) rangeText() string {
	return j.From.Format(time.RFC3339) + ", " + j.To.Format(time.RFC3339)
}

// Reprice prices the job's calls again with table and republishes those
// whose cost changed.
func (j Job) Reprice(ctx context.Context, table transform.PriceTable) error {
	res, err := reprice(ctx, j.Conn, j.Database, table, j.From, j.To, j.JS, j.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(j.Out, "%d calls in [%s); %d with a changed cost\n", res.Seen, j.rangeText(), res.Changed)
	if j.JS != nil && res.Changed > 0 {
		fmt.Fprintf(j.Out, "published them as replay %s; the clickhouse stage stores them and the rollups follow\n", j.ID)
	}
	return nil
}

// Reresolve resolves the users of the job's calls stored as unresolved and
// republishes those users now resolves.
func (j Job) Reresolve(ctx context.Context, users *transform.UserResolver) error {
	n, resolved, err := reresolve(ctx, j.Conn, j.Database, users, j.From, j.To)
	if err != nil {
		return err
	}
	fmt.Fprintf(j.Out, "%d unresolved calls in [%s); %d resolved, %d still unresolved\n", n, j.rangeText(), len(resolved), n-len(resolved))
	if j.JS == nil || len(resolved) == 0 {
		return nil
	}
	if err := republish(ctx, j.JS, j.ID, resolved); err != nil {
		return fmt.Errorf("users reresolve: %w", err)
	}
	fmt.Fprintf(j.Out, "published %d calls as replay %s; the clickhouse stage stores them and the rollups follow\n", len(resolved), j.ID)
	return nil
}

// republish publishes corrected calls as replay job on CALLPIPE_NORMALIZED,
// for the clickhouse and langfuse stages (clickhouse only for a call whose
// stored text was cut, so that Langfuse keeps the whole text).
func republish(ctx context.Context, js jetstream.JetStream, job string, calls []*callsdb.StoredCall) error {
	for _, c := range calls {
		m := &nats.Msg{Subject: bus.NormalizedSubjectPrefix + "." + c.Kind, Data: schema.AppendCall(nil, &c.Call), Header: nats.Header{}}
		m.Header.Set(bus.HeaderReplay, job)
		m.Header.Set(bus.HeaderMsgID, bus.ReplayMsgID(job, c.ID))
		sinks := "clickhouse,langfuse"
		if c.Truncated {
			sinks = "clickhouse"
		}
		m.Header.Set(bus.HeaderSinks, sinks)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			return fmt.Errorf("publish %s: %w", c.ID, err)
		}
	}
	return nil
}

// repriced counts what reprice did.
type repriced struct{ Seen, Changed int }

// reprice prices the stored calls of [from, to) again with table and
// republishes those whose cost changed as job (js nil: counts only).
func reprice(ctx context.Context, conn driver.Conn, database string, table transform.PriceTable, from, to time.Time,
	js jetstream.JetStream, job string) (repriced, error) {
	var r repriced
	err := callsdb.RangeCalls(ctx, conn, database, from, to, func(calls []callsdb.StoredCall) error {
		var out []*callsdb.StoredCall
		for i := range calls {
			c := &calls[i]
			r.Seen++
			cost := table.Cost(c.Model, c.InputTokens, c.OutputTokens)
			if SameCost(cost, c.CostUSD) {
				continue
			}
			c.CostUSD = cost
			out = append(out, c)
		}
		r.Changed += len(out)
		if js == nil {
			return nil
		}
		return republish(ctx, js, job, out)
	})
	if err != nil {
		return r, fmt.Errorf("prices reprice: %w", err)
	}
	return r, nil
}

// SameCost compares costs as stored (Float64 in ClickHouse) and computed.
func SameCost(a, b *float64) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return math.Abs(*a-*b) <= 1e-12*math.Max(1, math.Abs(*b))
}

// reresolve looks up again the API keys of the calls of [from, to) stored
// with user unresolved; it returns how many were unresolved and those users
// now resolves.
func reresolve(ctx context.Context, conn driver.Conn, database string, users *transform.UserResolver, from, to time.Time) (
	unresolved int, resolved []*callsdb.StoredCall, err error) {
	calls, err := callsdb.UnresolvedCalls(ctx, conn, database, from, to)
	if err != nil {
		return 0, nil, err
	}
	for i := range calls {
		c := &calls[i]
		user, src := users.Resolve(ctx, "", c.APIKeyHash)
		if src == schema.UserUnresolved {
			continue // Redis still cannot answer for this key
		}
		c.UserID, c.UserSource = user, src
		resolved = append(resolved, c)
	}
	return len(calls), resolved, nil
}
