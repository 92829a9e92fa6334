package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callpipe/callpipe/bus"
	"github.com/callpipe/callpipe/cmd/callpipe/internal/config"
	"github.com/callpipe/callpipe/ingest"
	"github.com/callpipe/callpipe/store/rawarchive"
)

func connectNATS(cfg *config.Config, name string, log *slog.Logger) (*nats.Conn, error) {
	tlsCfg, err := cfg.NATS.TLS.Build()
	if err != nil {
		return nil, fmt.Errorf("%w: nats.tls: %w", errConfig, err)
	}
	return ingest.Connect(ingest.NATSOptions{
		URL: cfg.NATS.URL, Name: "callpipe-" + name,
		User: cfg.NATS.User, Password: cfg.NATS.Password, Token: cfg.NATS.Token,
		NKeyFile: cfg.NATS.NKeyFile, CredsFile: cfg.NATS.CredsFile, TLS: tlsCfg, Logger: log,
	})
}

// connectJS is connectNATS and its JetStream context.
func connectJS(cfg *config.Config, name string, log *slog.Logger) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := connectNATS(cfg, name, log)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// newS3 is the S3 (MinIO or AWS) client of the s3 section. maxRetries bounds
// minio-go's own retries of a request (0: its default), so that a caller that
// must answer quickly (doctor) can give up early.
func newS3(cfg *config.Config, maxRetries int) (*minio.Client, error) {
	s := cfg.S3
	tlsCfg, err := s.TLS.Build()
	if err != nil {
		return nil, fmt.Errorf("%w: s3.tls: %w", errConfig, err)
	}
	c, err := rawarchive.NewClient(rawarchive.S3Config{Endpoint: s.Endpoint, AccessKey: s.AccessKey, SecretKey: s.SecretKey,
		Region: s.Region, UseSSL: s.UseSSL || s.TLS.Enabled, PathStyle: s.PathStyle, TLS: tlsCfg, MaxRetries: maxRetries})
	if err != nil {
		return nil, fmt.Errorf("%w: s3.endpoint %q: %w", errConfig, s.Endpoint, err)
	}
	return c, nil
}

func streamOptions(cfg *config.Config) bus.StreamOptions {
	return bus.StreamOptions{
		MaxAge:          time.Duration(cfg.NATS.Stream.MaxAge),
		MaxBytes:        int64(cfg.NATS.Stream.MaxBytes),
		DuplicateWindow: time.Duration(cfg.NATS.Stream.DuplicateWindow),
		Replicas:        cfg.NATS.Stream.Replicas,
		DLQMaxAge:       time.Duration(cfg.Transform.DLQMaxAge),
	}
}

// pipelineConsumers is the durable consumer of each worker stage, under
// the name the configuration gives it.
func pipelineConsumers(cfg *config.Config) map[string]bus.Consumer {
	names := map[string]string{
		bus.StageNormalize:  cfg.Transform.Consumer,
		bus.StageArchive:    cfg.Archive.Consumer,
		bus.StageClickHouse: cfg.ClickHouse.Consumer,
		bus.StageLangfuse:   cfg.Langfuse.Consumer,
	}
	out := make(map[string]bus.Consumer, len(bus.Stages))
	for _, s := range bus.Stages {
		out[s.Name] = bus.ConsumerOf(s.Name, names[s.Name])
	}
	return out
}

// registerLag reports the lag of the named stages' consumers (all when none
// are named) and the size of the dead-letter stream in reg.
func registerLag(reg prometheus.Registerer, nc *nats.Conn, cfg *config.Config, log *slog.Logger, stageNames ...string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	return reg.Register(bus.NewStageLagCollector(js, pipelineConsumers(cfg), log, stageNames...))
}
