package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callpipe/callpipe/store/settings"
)

// DialNATS connects to url with opts, giving up when ctx ends (its deadline
// is the connect timeout): the connect of NATS and LangfuseSettings.
func DialNATS(url string, opts []nats.Option) func(ctx context.Context) (*nats.Conn, error) {
	return func(ctx context.Context) (*nats.Conn, error) {
		opts := slices.Clone(opts)
		if dl, ok := ctx.Deadline(); ok {
			opts = append(opts, nats.Timeout(time.Until(dl)))
		}
		return nats.Connect(url, opts...)
	}
}

// LangfuseSettings checks the Langfuse settings in effect: those saved from
// the dashboard (NATS KV bucket settings.Bucket, read with a connection from
// connect, the secret unsealed with sealer) win over configured. Skipped when
// neither names a host.
func LangfuseSettings(configured settings.Langfuse, sealer *settings.Sealer, client *http.Client, connect func(ctx context.Context) (*nats.Conn, error)) Check {
	return func(ctx context.Context) []Result {
		l, source := configured, settings.SourceConfig
		saved, ok, err := savedLangfuse(ctx, connect, sealer)
		if err != nil {
			return []Result{fail("langfuse", "set "+settings.KeyConfig+" to the key serve saved the settings with (every serve and langfuse worker needs the same key), or save them again on the dashboard's Settings page",
				"the Langfuse settings saved from the dashboard cannot be read: %v", err)}
		}
		if ok {
			l, source = saved, settings.SourceSaved
		}
		if l.Host == "" {
			return []Result{skip("langfuse", "not configured: langfuse.host is empty (LANGFUSE_HOST) and no Langfuse settings were saved from the dashboard")}
		}
		rs := Langfuse(l.Host, l.PublicKey, l.SecretKey, client)(ctx)
		rs[0].Detail += " (settings from " + source + ")"
		return Encrypted(func(context.Context) []Result { return rs }, strings.HasPrefix(strings.ToLower(l.Host), "https://"))(ctx)
	}
}

// savedLangfuse reads the Langfuse settings saved at run time, if any. It
// never creates the bucket; NATS problems are the nats line's to report, so
// only a saved value that cannot be read is an error.
func savedLangfuse(ctx context.Context, connect func(ctx context.Context) (*nats.Conn, error), sealer *settings.Sealer) (settings.Langfuse, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	nc, err := connect(ctx)
	if err != nil {
		return settings.Langfuse{}, false, nil
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return settings.Langfuse{}, false, nil
	}
	return SavedLangfuse(ctx, js, sealer)
}

// SavedLangfuse is the Langfuse saved from the dashboard in js, if any; ok
// is false when the bucket or the value is missing or names no host. The
// error is that of a saved value that cannot be read (a sealed secret and
// no or another key, a damaged value).
func SavedLangfuse(ctx context.Context, js jetstream.JetStream, sealer *settings.Sealer) (l settings.Langfuse, ok bool, err error) {
	store, err := settings.OpenExisting(ctx, js, settings.WithSealer(sealer))
	if err != nil {
		return settings.Langfuse{}, false, nil
	}
	l, ok, err = store.Langfuse(ctx)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return settings.Langfuse{}, false, nil // NATS trouble, not the value's
		}
		return settings.Langfuse{}, false, err
	}
	return l, ok && l.Host != "", nil
}

// Probe is a container healthcheck: nil when a GET of url is answered 2xx
// within timeout.
func Probe(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("probe %s: %s %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Skipped is the check of a dependency that is not configured (why says so).
func Skipped(name, why string) Check {
	return func(context.Context) []Result {
		return []Result{skip(name, "not configured: %s", why)}
	}
}

// Closing releases a check's client once it ran.
func Closing(c Check, release func()) Check {
	return func(ctx context.Context) []Result {
		defer release()
		return c(ctx)
	}
}
