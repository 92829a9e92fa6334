//go:build cluster

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/integration/fakes/langfusetest"
	"github.com/callpipe/callpipe/integration/internal/harness"
	"github.com/callpipe/callpipe/integration/internal/testkit"
)

// kedaTrigger is a nats-jetstream trigger of a ScaledObject of the
// Kubernetes manifests.
type kedaTrigger struct {
	object, account, stream, consumer string
	lagThreshold                      int64
}

// kedaTriggers reads every nats-jetstream trigger of deploy/kubernetes/base.
func kedaTriggers(t *testing.T) []kedaTrigger {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(harness.RepoRoot(t), "deploy", "kubernetes", "base", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []kedaTrigger
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---\n") {
			var obj struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
				Spec struct {
					Triggers []struct {
						Type     string            `json:"type"`
						Metadata map[string]string `json:"metadata"`
					} `json:"triggers"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if obj.Kind != "ScaledObject" {
				continue
			}
			for _, tr := range obj.Spec.Triggers {
				if tr.Type != "nats-jetstream" {
					continue
				}
				m := tr.Metadata
				lag, err := strconv.ParseInt(m["lagThreshold"], 10, 64)
				if err != nil {
					t.Fatalf("%s: ScaledObject %s: lagThreshold %q: %v", f, obj.Metadata.Name, m["lagThreshold"], err)
				}
				out = append(out, kedaTrigger{object: obj.Metadata.Name, account: m["account"], stream: m["stream"], consumer: m["consumer"], lagThreshold: lag})
			}
		}
	}
	return out
}

// kedaJSZ is what KEDA's nats-jetstream scaler decodes from
// /jsz?acc=ACCOUNT&consumers=true&config=true (kedacore/keda
// pkg/scalers/nats_jetstream_scaler.go: jetStreamEndpointResponse), with
// the same JSON names.
type kedaJSZ struct {
	Accounts []struct {
		Name    string `json:"name"`
		Streams []struct {
			Name  string `json:"name"`
			State struct {
				LastSequence int64 `json:"last_seq"`
			} `json:"state"`
			Consumers []struct {
				Name          string `json:"name"`
				NumAckPending int    `json:"num_ack_pending"`
				NumPending    int    `json:"num_pending"`
				Cluster       struct {
					Leader string `json:"leader"`
				} `json:"cluster"`
			} `json:"consumer_detail"`
		} `json:"stream_detail"`
	} `json:"account_details"`
	MetaCluster struct {
		ClusterSize int `json:"cluster_size"`
	} `json:"meta_cluster"`
}

// kedaView is what the scaler gets for one trigger: the lag it scales on
// and the server it read it from.
type kedaView struct {
	lag    int64
	leader string
}

func getJSON(url string, v any) ([]byte, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return b, json.Unmarshal(b, v)
}

// kedaRead does what the scaler does on a cluster: it reads the monitoring
// endpoint of every server, takes the consumer's figures from the server
// that leads it (by the server_name of /varz), and scales on num_pending +
// num_ack_pending. Unlike the scaler, which falls back to the stream's last
// sequence, a consumer missing from the answer is an error here, and the
// figures must be present, not zero for want of a field.
func kedaRead(monitors []string, tr kedaTrigger) (kedaView, error) {
	var errs []string
	for _, mon := range monitors {
		var varz struct {
			ServerName  string   `json:"server_name"`
			ConnectURLs []string `json:"connect_urls"`
		}
		if _, err := getJSON(mon+"/varz", &varz); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if varz.ServerName == "" || len(varz.ConnectURLs) == 0 {
			return kedaView{}, fmt.Errorf("%s/varz: no server_name or connect_urls (the scaler finds the consumer's leader through them)", mon)
		}
		var jsz kedaJSZ
		raw, err := getJSON(fmt.Sprintf("%s/jsz?acc=%s&consumers=true&config=true", mon, tr.account), &jsz)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if jsz.MetaCluster.ClusterSize != 3 {
			return kedaView{}, fmt.Errorf("%s: meta_cluster.cluster_size %d, want 3 (the scaler looks for the leader only when it is > 1)", mon, jsz.MetaCluster.ClusterSize)
		}
		for _, a := range jsz.Accounts {
			if a.Name != tr.account {
				continue
			}
			for _, s := range a.Streams {
				if s.Name != tr.stream {
					continue
				}
				for _, c := range s.Consumers {
					if c.Name != tr.consumer || c.Cluster.Leader != varz.ServerName {
						continue
					}
					for _, field := range []string{`"num_pending":`, `"num_ack_pending":`} {
						if !bytes.Contains(raw, []byte(field)) {
							return kedaView{}, fmt.Errorf("%s: no %s in the answer", mon, field)
						}
					}
					return kedaView{lag: int64(c.NumPending + c.NumAckPending), leader: c.Cluster.Leader}, nil
				}
			}
		}
		errs = append(errs, fmt.Sprintf("%s (%s): account %s, stream %s, consumer %s led by it: not found", mon, varz.ServerName, tr.account, tr.stream, tr.consumer))
	}
	return kedaView{}, fmt.Errorf("no server leads %s/%s in account %s: %s", tr.stream, tr.consumer, tr.account, strings.Join(errs, "; "))
}

// TestClusterKEDAScalerEndpoint: the ScaledObjects of deploy/kubernetes
// name an account, stream and consumer that KEDA's nats-jetstream scaler
// finds on the cluster's monitoring endpoints (/jsz?acc=...&consumers=true,
// read from the consumer's leader), and the lag it scales on moves with the
// load: calls sent while no normalize worker runs show as the normalize
// consumer's lag, one each; normalize turns them into batched messages
// that show as the Langfuse consumer's lag until a Langfuse worker takes
// them; then both are 0.
func TestClusterKEDAScalerEndpoint(t *testing.T) {
	cl := harness.Cluster(t)
	triggers := kedaTriggers(t)
	byStream := map[string]kedaTrigger{}
	for _, tr := range triggers {
		byStream[tr.stream] = tr
		if tr.account != "$G" {
			t.Errorf("ScaledObject %s names account %q: the cluster (and nats-values.yaml's user) is in the default account $G", tr.object, tr.account)
		}
	}
	normalize, lf := byStream[bus.CallsStream], byStream[bus.NormalizedStream]
	if normalize.consumer != bus.StageOf(bus.StageNormalize).Consumer || lf.consumer != bus.StageOf(bus.StageLangfuse).Consumer {
		t.Fatalf("the ScaledObjects scale on %q of %s and %q of %s; the stages' consumers are %q and %q",
			normalize.consumer, bus.CallsStream, lf.consumer, bus.NormalizedStream, bus.StageOf(bus.StageNormalize).Consumer, bus.StageOf(bus.StageLangfuse).Consumer)
	}
	bin := testkit.Binary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// fresh streams, so that the lags are this test's
	js := clusterJetStream(ctx, t, cl, true)
	ensureR3Streams(ctx, t, js)

	lfSrv := langfusetest.New(langfusetest.Options{})
	defer lfSrv.Close()
	env := append(os.Environ(), "CALLPIPE_NATS_STREAM_REPLICAS=3",
		"LANGFUSE_HOST="+lfSrv.Host(), "LANGFUSE_PUBLIC_KEY=pk-lf-test", "LANGFUSE_SECRET_KEY=sk-lf-test",
		"CALLPIPE_LANGFUSE_TRANSPORT=ingestion", "CALLPIPE_LOG_LEVEL=info")
	addrs := map[string]string{"collect": testkit.FreeAddr(t), "normalize": testkit.FreeAddr(t), "langfuse": testkit.FreeAddr(t)}
	procs := map[string]*proc{
		"collect":   {name: "collect", args: []string{"collect", "--collect.listen", addrs["collect"]}},
		"normalize": {name: "normalize", args: []string{"worker", "--stages", "normalize", "--redis.addr=", "--worker.listen", addrs["normalize"]}},
		"langfuse":  {name: "langfuse", args: []string{"worker", "--stages", "langfuse", "--worker.listen", addrs["langfuse"]}},
	}
	for _, p := range procs {
		p.env, p.out = env, &testkit.Buffer{}
	}
	defer reap(t, procs)
	// a process is started once it says so: /readyz answers before a
	// stage has made its consumer
	running := map[string]string{"collect": "", "normalize": `"normalize stage running"`, "langfuse": `"langfuse stage running"`}
	start := func(name string) {
		p := procs[name]
		if err := p.start(bin); err != nil {
			t.Fatal(err)
		}
		testkit.WaitHealthy(t, "http://"+addrs[name]+"/readyz")
		testkit.WaitFor(t, time.Minute, name+" running", func() (bool, string) {
			return strings.Count(p.out.String(), running[name]) >= strings.Count(p.out.String(), `"msg":"listening"`), ""
		})
	}
	stop := func(name string) {
		if err := procs[name].term(time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	// A consumer just made (or a stream just remade) is not on any
	// server's /jsz as led by it until its group has elected a leader,
	// which takes a moment on a loaded machine: view reads until one
	// server reports it.
	view := func(tr kedaTrigger) kedaView {
		var v kedaView
		testkit.WaitFor(t, 30*time.Second, tr.object+" readable from its consumer's leader", func() (bool, string) {
			var err error
			if v, err = kedaRead(cl.NATSMonitors, tr); err != nil {
				return false, err.Error()
			}
			return true, ""
		})
		return v
	}
	waitLag := func(what string, tr kedaTrigger, ok func(int64) bool) kedaView {
		var v kedaView
		testkit.WaitFor(t, 2*time.Minute, what, func() (bool, string) {
			var err error
			v, err = kedaRead(cl.NATSMonitors, tr)
			if err != nil {
				return false, err.Error()
			}
			return ok(v.lag), fmt.Sprintf("lag %d (from %s)", v.lag, v.leader)
		})
		return v
	}

	// The workers create their durable consumers; with none running, the
	// scaler reads 0 for both.
	start("normalize")
	start("langfuse")
	stop("normalize")
	stop("langfuse")
	for _, tr := range []kedaTrigger{normalize, lf} {
		if v := view(tr); v.lag != 0 {
			t.Fatalf("%s: lag %d before any call", tr.object, v.lag)
		}
	}

	// Load: calls arrive while no normalize worker runs.
	start("collect")
	const calls = 5000
	run := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000, 36)
	base := time.Now().UTC()
	for lo := 0; lo < calls; lo += 500 {
		var body []byte
		for n := lo; n < lo+500; n++ {
			body = clusterEvent(body, "keda-"+run, n, base)
		}
		resp, err := http.Post("http://"+addrs["collect"]+"/v1/events", "application/x-ndjson", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /v1/events: %s", resp.Status)
		}
	}
	v := waitLag("normalize lag = the calls sent", normalize, func(l int64) bool { return l == calls })
	t.Logf("%s: lag %d after %d calls (read from the consumer's leader %s); %.1f replicas wanted at lagThreshold %d",
		normalize.object, v.lag, calls, v.leader, float64(v.lag)/float64(normalize.lagThreshold), normalize.lagThreshold)
	if v := view(lf); v.lag != 0 {
		t.Fatalf("%s: lag %d before normalize ran", lf.object, v.lag)
	}

	// normalize takes them: its lag falls to 0, the Langfuse consumer's
	// rises by the batched messages it published.
	start("normalize")
	waitLag("normalize lag back to 0", normalize, func(l int64) bool { return l == 0 })
	msgs := int64(streamState(t, js, bus.NormalizedStream).Msgs)
	v = waitLag("Langfuse lag = the normalized messages", lf, func(l int64) bool { return l == msgs })
	t.Logf("%s: lag %d messages for %d calls (%.0f calls a message); %.1f replicas wanted at lagThreshold %d",
		lf.object, v.lag, calls, float64(calls)/float64(msgs), float64(v.lag)/float64(lf.lagThreshold), lf.lagThreshold)
	if msgs <= 0 || msgs >= calls {
		t.Fatalf("%d messages on %s for %d calls: not batched", msgs, bus.NormalizedStream, calls)
	}

	// a Langfuse worker takes them
	start("langfuse")
	waitLag("Langfuse lag back to 0", lf, func(l int64) bool { return l == 0 })
	if got := len(lfSrv.Observations()); got != calls {
		t.Fatalf("Langfuse holds %d generations, want %d", got, calls)
	}
	for _, name := range []string{"collect", "normalize", "langfuse"} {
		stop(name)
	}
}
