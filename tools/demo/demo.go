// Package demo runs the whole pipeline on one machine as child processes of
// the callpipe binary (exactly what an operator would run), drives a
// synthetic Xinference workload through the proxy and checks that the usage
// API reports every call that was sent (`callpipe demo`).
package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"

	"github.com/callpipe/callpipe/internal/fleet"
	"github.com/callpipe/callpipe/store/rawarchive"
	"github.com/callpipe/callpipe/tools/workload"
	"github.com/callpipe/callpipe/transform"
)

// Options are the demo's own flags.
type Options struct {
	Calls       int
	Concurrency int
	Rate        float64 // calls per second (0: as fast as the clients go)
	StreamShare float64
	ErrorShare  float64
	Upstream    string // a real Xinference instead of the built-in one
	Dir         string // the children's logs, the proxy spool and summary.json
	Exit        bool   // exit after the summary instead of running until ctx ends
	WaitTimeout time.Duration
	Seed        uint64
}

// Env is what the demo takes from callpipe's configuration.
type Env struct {
	ConfigFile string // passed to every child process
	// Listen addresses of the roles (collect.listen, proxy.listen, worker.listen, serve.listen).
	Collect, Proxy, Worker, Serve string
	ArchiveStage                  bool   // the worker has an archive stage
	LangfuseHost                  string // "" : the langfuse stage is skipped
	S3                            *minio.Client
	Bucket, Region, Endpoint      string // of the s3 section
	ArchivePrefix                 string
	Redis                         *redis.Client
	UserKeyPrefix                 string
	Out                           io.Writer
	// ExamplePrices, when set, are the worker's transform.prices, so that
	// the built-in models' calls have a cost to chart.
	ExamplePrices string
}

// Run runs the demo. It fails when the usage API does not show every call
// the workload sent; with o.Exit unset it then runs until ctx ends.
func Run(ctx context.Context, o Options, env Env) error {
	d := &demo{env: env, o: o, out: env.Out, fleet: &fleet.Fleet{Dir: o.Dir, ConfigFile: env.ConfigFile, Out: env.Out}}
	return d.run(ctx)
}

type demo struct {
	env   Env
	o     Options
	out   io.Writer
	fleet *fleet.Fleet
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) run(ctx context.Context) (err error) {
	if err := os.MkdirAll(d.o.Dir, 0o755); err != nil {
		return fmt.Errorf("demo dir: %w", err)
	}
	defer func() {
		// Entry points first, so that what they accepted drains through the workers.
		if _, stopErr := d.fleet.Stop("proxy", "collect", "worker", "serve"); stopErr != nil && err == nil {
			err = stopErr
		}
	}()

	if err := d.fleet.RunOnce(ctx, "migrate", "migrate"); err != nil {
		return err
	}
	if err := d.ensureBucket(ctx); err != nil {
		return err
	}
	if err := d.registerUsers(ctx); err != nil {
		return err
	}

	upstream := d.o.Upstream
	if upstream == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("built-in upstream: %w", err)
		}
		srv := &http.Server{Handler: &workload.Upstream{Models: workload.DefaultModels(),
			FirstToken: 15 * time.Millisecond, TokenDelay: time.Millisecond}, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		upstream = "http://" + ln.Addr().String()
		d.say("upstream   built-in Xinference at %s (models: %s)", upstream, strings.Join(modelUIDs(), ", "))
	} else {
		d.say("upstream   %s", upstream)
	}

	stagesToRun := []string{"normalize", "clickhouse"}
	if d.env.ArchiveStage {
		stagesToRun = append(stagesToRun, "archive")
	}
	if d.env.LangfuseHost != "" {
		stagesToRun = append(stagesToRun, "langfuse")
		d.say("langfuse   sending traces to %s", d.env.LangfuseHost)
	} else {
		d.say("langfuse   not configured (set LANGFUSE_HOST, LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY) — skipped")
	}
	spool := filepath.Join(d.o.Dir, "spool")
	starts := []struct {
		name   string
		args   []string
		health string
	}{
		{"collect", []string{"collect"}, d.env.Collect},
		{"proxy", []string{"proxy", "--proxy.upstream", upstream, "--proxy.spool_dir", spool}, d.env.Proxy},
		// A short archive flush so that the demo shows objects within seconds.
		{"worker", d.workerArgs(stagesToRun), d.env.Worker},
		{"serve", []string{"serve"}, d.env.Serve},
	}
	for _, s := range starts {
		if err := d.fleet.Start(s.name, s.args...); err != nil {
			return err
		}
	}
	for _, s := range starts {
		if err := d.fleet.WaitReady(ctx, s.name, s.health); err != nil {
			return err
		}
	}
	d.say("pipeline   collect http://%s  proxy http://%s  worker stages %s  serve http://%s",
		d.env.Collect, d.env.Proxy, strings.Join(stagesToRun, ","), d.env.Serve)

	from := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	spec := workload.Spec{BaseURL: "http://" + d.env.Proxy, Calls: d.o.Calls, Concurrency: d.o.Concurrency,
		Rate: d.o.Rate, StreamShare: d.o.StreamShare, ErrorShare: d.o.ErrorShare, Seed: d.o.Seed,
		// Agent runs in sessions and one batch job give the trace, session
		// and batch views something real to show.
		AgentShare: 0.3, BatchCalls: min(40, d.o.Calls/10)}
	res, err := workload.Run(ctx, spec, func(p workload.Progress) {
		rate := float64(p.Done) / max(p.Elapsed.Seconds(), 0.001)
		d.say("workload   %d/%d calls  %.0f calls/s  %d answered with an error", p.Done, p.Total, rate, p.Errors)
	})
	if err != nil {
		return err
	}
	to := time.Now().UTC().Add(time.Minute).Truncate(time.Second)

	usage, err := d.waitUsage(ctx, from, to, res.Sent)
	if err != nil {
		return err
	}
	d.printSummary(res, usage)
	if err := fleet.WriteJSON(filepath.Join(d.o.Dir, "summary.json"), map[string]any{
		"workload": res, "usage": usage, "from": from, "to": to,
	}); err != nil {
		return err
	}
	objects, bytes, err := d.waitArchive(ctx, slices.Contains(stagesToRun, "archive"))
	if err != nil {
		return err
	}
	if objects > 0 {
		d.say("archive    %d objects, %d bytes under s3://%s/%s/ (endpoint %s)", objects, bytes, d.env.Bucket,
			strings.Trim(d.env.ArchivePrefix, "/"), d.env.Endpoint)
	}
	d.say("dashboard  http://%s/", d.env.Serve)
	d.say("logs       %s/*.log", d.o.Dir)

	exact := usage.Totals.Calls == res.Sent
	if !exact {
		return fmt.Errorf("demo: the usage API shows %d calls, the workload sent %d", usage.Totals.Calls, res.Sent)
	}
	if d.o.Exit {
		return nil
	}
	d.say("running    until Ctrl-C")
	<-ctx.Done()
	return nil
}

func modelUIDs() []string {
	var out []string
	for _, m := range workload.DefaultModels() {
		out = append(out, m.UID)
	}
	return out
}

func (d *demo) registerUsers(ctx context.Context) error {
	rdb := d.env.Redis
	var names []string
	for _, u := range workload.DefaultUsers() {
		if u.APIKey == "" {
			continue
		}
		if _, err := transform.AddUser(ctx, rdb, d.env.UserKeyPrefix, u.APIKey, u.ID, u.ID+"'s demo key"); err != nil {
			return fmt.Errorf("demo: register API key of %s: %w", u.ID, err)
		}
		names = append(names, u.ID)
	}
	d.say("users      API keys of %s registered in Redis; the others name themselves in the request", strings.Join(names, ", "))
	return nil
}

func (d *demo) ensureBucket(ctx context.Context) error {
	if err := rawarchive.EnsureBucket(ctx, d.env.S3, d.env.Bucket, d.env.Region); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// waitUsage polls the usage API until it counts want calls.
func (d *demo) waitUsage(ctx context.Context, from, to time.Time, want int64) (*fleet.UsageAnswer, error) {
	deadline := time.Now().Add(d.o.WaitTimeout)
	var last int64 = -1
	for {
		ans, err := fleet.GetUsage(ctx, d.env.Serve, from, to, "model,user")
		if err == nil && ans.Totals.Calls != last {
			last = ans.Totals.Calls
			d.say("pipeline   %d/%d calls visible in the usage API", last, want)
		}
		if err == nil && ans.Totals.Calls >= want {
			return ans, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return nil, fmt.Errorf("demo: usage API after %s: %w\n%s", d.o.WaitTimeout, err, fleet.Tail(d.fleet.Log("worker")))
			}
			return ans, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (d *demo) printSummary(res *workload.Result, usage *fleet.UsageAnswer) {
	d.say("")
	tw := tabwriter.NewWriter(d.out, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "model\tuser\tcalls\terrors\tinput tokens\toutput tokens\ttotal tokens\t")
	rows := slices.Clone(usage.Rows)
	slices.SortFunc(rows, func(a, b map[string]any) int {
		if c := strings.Compare(str(a["model"]), str(b["model"])); c != 0 {
			return c
		}
		return strings.Compare(userOf(a), userOf(b))
	})
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t\n", str(r["model"]), userOf(r), num(r["calls"]), num(r["errors"]),
			num(r["input_tokens"]), num(r["output_tokens"]), num(r["total_tokens"]))
	}
	t := usage.Totals
	fmt.Fprintf(tw, "total\t\t%d\t%d\t%d\t%d\t%d\t\n", t.Calls, t.Errors, t.InputTokens, t.OutputTokens, t.TotalTokens)
	_ = tw.Flush()
	mark := "= sent"
	if t.Calls != res.Sent {
		mark = "≠ sent"
	}
	d.say("")
	d.say("usage API  %d calls %s %d (%d answered with an error; workload took %s)", t.Calls, mark, res.Sent,
		res.Total.Errors, res.Elapsed.Round(time.Millisecond))
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func userOf(r map[string]any) string {
	if u := str(r["user"]); u != "" {
		return u
	}
	return str(r["user_id"])
}

func num(v any) int64 {
	f, _ := v.(float64)
	return int64(f)
}

// waitArchive waits (up to a few flush intervals) for the archive stage's
// first objects and reports what the prefix holds.
func (d *demo) waitArchive(ctx context.Context, running bool) (objects int, size int64, err error) {
	if !running {
		return 0, 0, nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		objects, size = 0, 0
		for obj := range d.env.S3.ListObjects(ctx, d.env.Bucket, minio.ListObjectsOptions{Prefix: strings.Trim(d.env.ArchivePrefix, "/") + "/", Recursive: true}) {
			if obj.Err != nil {
				return 0, 0, fmt.Errorf("demo: list archive: %w", obj.Err)
			}
			objects++
			size += obj.Size
		}
		if objects > 0 || time.Now().After(deadline) {
			if objects == 0 {
				d.say("archive    no objects yet after 30s; see %s", d.fleet.Log("worker"))
			}
			return objects, size, nil
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// workerArgs runs the stages with a short archive flush, so that the demo
// shows objects within seconds, and the example prices if any.
func (d *demo) workerArgs(stagesToRun []string) []string {
	args := []string{"worker", "--stages", strings.Join(stagesToRun, ","), "--archive.flush_interval", "5s"}
	if d.env.ExamplePrices != "" {
		args = append(args, "--transform.prices", d.env.ExamplePrices)
		d.say("prices     example prices for the built-in models (%s); set transform.prices or `callpipe prices set` for real ones", d.env.ExamplePrices)
	}
	return args
}

// ExamplePrices are made-up prices (USD per 1M tokens) for the built-in
// upstream's models (Env.ExamplePrices), used only when no prices are
// configured and the built-in upstream answers.
func ExamplePrices(configured []string, upstream string) string {
	if len(configured) > 0 || upstream != "" {
		return ""
	}
	return "qwen2.5-*=0.4/1.2,llama-3.1-*=0.3/0.6,deepseek-*=0.55/2.19,bge-*=0.02/0"
}
