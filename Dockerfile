# callpipe container image: one static binary on distroless, non-root.
#   docker build -t callpipe:local .            (or: docker compose -f deploy/compose/docker-compose.yml build)
# The go build line below is checked by deploy/deploy_test.go: it must keep the flags of the
# Taskfile's build task (what CI builds) plus CGO_ENABLED=0 and -trimpath for a static, reproducible binary.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -o /out/callpipe ./cmd/callpipe
# The proxy's spool directory must exist owned by the runtime user so that a
# named volume mounted there inherits that ownership.
RUN mkdir -p /out/var/lib/callpipe/spool && /out/callpipe version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/callpipe /callpipe
COPY --from=build --chown=65532:65532 /out/var/lib/callpipe /var/lib/callpipe
USER 65532:65532
WORKDIR /var/lib/callpipe
# proxy 8080, collect 8081, worker ops 8082, serve 8090
EXPOSE 8080 8081 8082 8090
ENTRYPOINT ["/callpipe"]
CMD ["--help"]
