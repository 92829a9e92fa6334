package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/spf13/cobra"

	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/transform"
	"github.com/callpipe/callpipe/workload"
)

func init() { registerCommand(newDemoCommand) }

// demoOptions are the demo's own flags; everything else is configuration.
type demoOptions struct {
	calls       int
	concurrency int
	rate        float64
	streamShare float64
	errorShare  float64
	upstream    string
	dir         string
	exit        bool
	waitTimeout time.Duration
	seed        uint64
}

// newDemoCommand runs the whole pipeline on one machine as child processes of
// this binary (exactly what an operator would run), drives a synthetic
// Xinference workload through the proxy and checks that the usage API reports
// every call that was sent.
func newDemoCommand(a *app) *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run collector, proxy, workers and serve, drive a synthetic Xinference workload through them and print the usage summary",
		Long: "demo needs the services of `go tool task services:up` (NATS, ClickHouse, MinIO, Redis; their addresses from the\n" +
			"environment or config). It starts `migrate`, `collect`, `proxy`, `worker` and `serve` from this binary, answers\n" +
			"the proxy with a built-in Xinference (or --upstream), sends --calls calls and waits until the usage API shows\n" +
			"them all. It then keeps running until Ctrl-C (or exits with --exit): 0 when every call arrived, 1 otherwise.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := a.load(cmd, nil)
			if err != nil {
				return err
			}
			if o.calls <= 0 {
				return fmt.Errorf("%w: --calls must be positive", errUsage)
			}
			out := cmd.OutOrStdout()
			d := &demo{cfg: cfg, log: log, o: o, out: out, fleet: &fleet{dir: o.dir, configFile: a.configFile, out: out}}
			return d.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.calls, "calls", 2000, "calls to send through the proxy")
	f.IntVar(&o.concurrency, "concurrency", 8, "parallel clients")
	f.Float64Var(&o.rate, "rate", 0, "calls per second (0: as fast as the clients go)")
	f.Float64Var(&o.streamShare, "stream-share", 0.5, "share of chat calls that stream")
	f.Float64Var(&o.errorShare, "error-share", 0.02, "share of chat calls the built-in upstream fails")
	f.StringVar(&o.upstream, "upstream", "", "a real Xinference base URL instead of the built-in one")
	f.StringVar(&o.dir, "dir", filepath.Join(".state", "demo"), "folder for the children's logs and the proxy spool")
	f.BoolVar(&o.exit, "exit", false, "exit after the summary instead of running until Ctrl-C")
	f.DurationVar(&o.waitTimeout, "wait", 2*time.Minute, "how long to wait for every call to reach the usage API")
	f.Uint64Var(&o.seed, "seed", uint64(time.Now().UnixNano()), "workload seed")
	return cmd
}

type demo struct {
	cfg   *config.Config
	log   *slog.Logger
	o     demoOptions
	out   io.Writer
	fleet *fleet
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) run(ctx context.Context) (err error) {
	if err := os.MkdirAll(d.o.dir, 0o755); err != nil {
		return fmt.Errorf("demo dir: %w", err)
	}
	defer func() {
		// Entry points first, so that what they accepted drains through the workers.
		if _, stopErr := d.fleet.stop("proxy", "collect", "worker", "serve"); stopErr != nil && err == nil {
			err = stopErr
		}
	}()

	if err := d.fleet.runOnce(ctx, "migrate", "migrate"); err != nil {
		return err
	}
	if err := d.ensureBucket(ctx); err != nil {
		return err
	}
	if err := d.registerUsers(ctx); err != nil {
		return err
	}

	upstream := d.o.upstream
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
	if _, ok := stages["archive"]; ok {
		stagesToRun = append(stagesToRun, "archive")
	}
	if d.cfg.Langfuse.Host != "" {
		stagesToRun = append(stagesToRun, "langfuse")
		d.say("langfuse   sending traces to %s", d.cfg.Langfuse.Host)
	} else {
		d.say("langfuse   not configured (set LANGFUSE_HOST, LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY) — skipped")
	}
	spool := filepath.Join(d.o.dir, "spool")
	starts := []struct {
		name   string
		args   []string
		health string
	}{
		{"collect", []string{"collect"}, d.cfg.Collect.Listen},
		{"proxy", []string{"proxy", "--proxy.upstream", upstream, "--proxy.spool_dir", spool}, d.cfg.Proxy.Listen},
		// A short archive flush so that the demo shows objects within seconds.
		{"worker", []string{"worker", "--stages", strings.Join(stagesToRun, ","), "--archive.flush_interval", "5s"}, d.cfg.Worker.Listen},
		{"serve", []string{"serve"}, d.cfg.Serve.Listen},
	}
	for _, s := range starts {
		if err := d.fleet.start(s.name, s.args...); err != nil {
			return err
		}
	}
	for _, s := range starts {
		if err := d.fleet.waitReady(ctx, s.name, s.health); err != nil {
			return err
		}
	}
	d.say("pipeline   collect http://%s  proxy http://%s  worker stages %s  serve http://%s",
		d.cfg.Collect.Listen, d.cfg.Proxy.Listen, strings.Join(stagesToRun, ","), d.cfg.Serve.Listen)

	from := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	spec := workload.Spec{BaseURL: "http://" + d.cfg.Proxy.Listen, Calls: d.o.calls, Concurrency: d.o.concurrency,
		Rate: d.o.rate, StreamShare: d.o.streamShare, ErrorShare: d.o.errorShare, AgentShare: 0.1, Seed: d.o.seed}
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
	if err := writeJSONFile(filepath.Join(d.o.dir, "summary.json"), map[string]any{
		"workload": res, "usage": usage, "from": from, "to": to,
	}); err != nil {
		return err
	}
	objects, bytes, err := d.waitArchive(ctx, slices.Contains(stagesToRun, "archive"))
	if err != nil {
		return err
	}
	if objects > 0 {
		d.say("archive    %d objects, %d bytes under s3://%s/%s/ (endpoint %s)", objects, bytes, d.cfg.S3.Bucket,
			strings.Trim(d.cfg.Archive.Prefix, "/"), d.cfg.S3.Endpoint)
	}
	d.say("dashboard  http://%s/", d.cfg.Serve.Listen)
	d.say("logs       %s/*.log", d.o.dir)

	exact := usage.Totals.Calls == res.Sent
	if !exact {
		return fmt.Errorf("demo: the usage API shows %d calls, the workload sent %d", usage.Totals.Calls, res.Sent)
	}
	if d.o.exit {
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
	rdb, err := newRedis(d.cfg, 0)
	if err != nil {
		return err
	}
	defer rdb.Close()
	var names []string
	for _, u := range workload.DefaultUsers() {
		if u.APIKey == "" {
			continue
		}
		if _, err := transform.AddUser(ctx, rdb, d.cfg.Transform.UserKeyPrefix, u.APIKey, u.ID, u.ID+"'s demo key"); err != nil {
			return fmt.Errorf("demo: register API key of %s: %w", u.ID, err)
		}
		names = append(names, u.ID)
	}
	d.say("users      API keys of %s registered in Redis; the others name themselves in the request", strings.Join(names, ", "))
	return nil
}

func (d *demo) ensureBucket(ctx context.Context) error {
	s3c, err := newS3(d.cfg, 0)
	if err != nil {
		return err
	}
	ok, err := s3c.BucketExists(ctx, d.cfg.S3.Bucket)
	if err != nil {
		return fmt.Errorf("demo: s3 bucket %s: %w", d.cfg.S3.Bucket, err)
	}
	if !ok {
		if err := s3c.MakeBucket(ctx, d.cfg.S3.Bucket, minio.MakeBucketOptions{Region: d.cfg.S3.Region}); err != nil {
			return fmt.Errorf("demo: create s3 bucket %s: %w", d.cfg.S3.Bucket, err)
		}
	}
	return nil
}

// usageAnswer is the part of GET /api/v1/usage the demo reads.
type usageAnswer struct {
	Rows   []map[string]any `json:"rows"`
	Totals usageNumbers     `json:"totals"`
}

type usageNumbers struct {
	Calls        int64   `json:"calls"`
	Errors       int64   `json:"errors"`
	InputTokens  int64   `json:"input_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	TotalTokens  int64   `json:"total_tokens"`
	CostUSD      float64 `json:"cost_usd"`
}

func (d *demo) usage(ctx context.Context, from, to time.Time, groupBy string) (*usageAnswer, error) {
	q := url.Values{"from": {from.Format(time.RFC3339)}, "to": {to.Format(time.RFC3339)}}
	if groupBy != "" {
		q.Set("group_by", groupBy)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.cfg.Serve.Listen+"/api/v1/usage?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("usage API: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("usage API: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var ans usageAnswer
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("usage API answer: %w", err)
	}
	return &ans, nil
}

// waitUsage polls the usage API until it counts want calls.
func (d *demo) waitUsage(ctx context.Context, from, to time.Time, want int64) (*usageAnswer, error) {
	deadline := time.Now().Add(d.o.waitTimeout)
	var last int64 = -1
	for {
		ans, err := d.usage(ctx, from, to, "model,user")
		if err == nil && ans.Totals.Calls != last {
			last = ans.Totals.Calls
			d.say("pipeline   %d/%d calls visible in the usage API", last, want)
		}
		if err == nil && ans.Totals.Calls >= want {
			return ans, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return nil, fmt.Errorf("demo: usage API after %s: %w\n%s", d.o.waitTimeout, err, tail(d.fleet.child("worker").log))
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

func (d *demo) printSummary(res *workload.Result, usage *usageAnswer) {
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
	s3c, err := newS3(d.cfg, 0)
	if err != nil {
		return 0, 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		objects, size = 0, 0
		for obj := range s3c.ListObjects(ctx, d.cfg.S3.Bucket, minio.ListObjectsOptions{Prefix: strings.Trim(d.cfg.Archive.Prefix, "/") + "/", Recursive: true}) {
			if obj.Err != nil {
				return 0, 0, fmt.Errorf("demo: list archive: %w", obj.Err)
			}
			objects++
			size += obj.Size
		}
		if objects > 0 || time.Now().After(deadline) {
			if objects == 0 {
				d.say("archive    no objects yet after 30s; see %s", d.fleet.child("worker").log)
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

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
