#!/usr/bin/env bash
# The main job on one machine: start the local services, provision the streams,
# run the pipeline pieces that exist (collector, proxy when an upstream is given,
# worker stages), send a sample of call events through the collector, and keep
# everything running until Ctrl-C, which stops each piece gracefully.
#
#   go tool task run                                   # collector + workers
#   CALLPIPE_PROXY_UPSTREAM=http://xinference:9997 go tool task run   # also the proxy
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

bash deploy/local/services.sh up >/dev/null
eval "$(bash deploy/local/services.sh env)"
mkdir -p bin .state/run
go build -o bin/callpipe ./cmd/callpipe

collect_addr=${CALLPIPE_COLLECT_LISTEN:-127.0.0.1:8081}
proxy_addr=${CALLPIPE_PROXY_LISTEN:-127.0.0.1:8080}
worker_addr=${CALLPIPE_WORKER_LISTEN:-127.0.0.1:8082}
export CALLPIPE_LOG_FORMAT=${CALLPIPE_LOG_FORMAT:-text}
export CALLPIPE_CLICKHOUSE_ADDR CALLPIPE_REDIS_ADDR CALLPIPE_S3_ENDPOINT CALLPIPE_S3_ACCESS_KEY CALLPIPE_S3_SECRET_KEY

bin/callpipe migrate

pids=()
stop() {
  echo "stopping (SIGTERM) ..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  echo "stopped"
}
trap stop INT TERM

bin/callpipe collect --listen "$collect_addr" 2>.state/run/collect.log &
pids+=($!)
if [ -n "${CALLPIPE_PROXY_UPSTREAM:-}" ]; then
  bin/callpipe proxy --listen "$proxy_addr" --proxy.spool_dir .state/run/spool 2>.state/run/proxy.log &
  pids+=($!)
fi
stages=normalize,clickhouse
if [ -n "${CALLPIPE_LANGFUSE_HOST:-${LANGFUSE_HOST:-${LANGFUSE_BASE_URL:-}}}" ]; then
  stages+=,langfuse
else
  echo "langfuse: no LANGFUSE_HOST (or CALLPIPE_LANGFUSE_HOST) set — the langfuse stage is skipped"
fi
if [ -n "$stages" ]; then
  bin/callpipe worker --stages "$stages" --listen "$worker_addr" 2>.state/run/worker.log &
  pids+=($!)
fi

for _ in $(seq 100); do curl -fsS "http://$collect_addr/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sample=""
for i in 1 2 3; do
  sample+="{\"id\":\"sample-$(date +%s%N)-$i\",\"start_time\":\"$now\",\"end_time\":\"$now\",\"endpoint\":\"/v1/chat/completions\",\"model\":\"qwen2.5-instruct\",\"user\":\"demo\",\"request\":{\"messages\":[{\"role\":\"user\",\"content\":\"hello $i\"}]},\"response\":{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"hi\"}}]},\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}"$'\n'
done
echo "sample events → collector: $(curl -sS -H 'Content-Type: application/x-ndjson' --data-binary "$sample" "http://$collect_addr/v1/events")"

ch_host=${CALLPIPE_CLICKHOUSE_ADDR%:*} ch_port=${CALLPIPE_CLICKHOUSE_ADDR##*:}
for _ in $(seq 30); do
  rows=$(clickhouse-client --host "$ch_host" --port "$ch_port" -q "SELECT count() FROM callpipe.calls FINAL WHERE id LIKE 'sample-%'" 2>/dev/null || echo 0)
  [ "${rows:-0}" -gt 0 ] && break
  sleep 0.5
done
if [ "${rows:-0}" -gt 0 ]; then
  echo "ClickHouse callpipe.calls holds the ${rows} sample calls: collector → normalize → clickhouse works end to end"
else
  echo "ClickHouse callpipe.calls does not show the sample calls yet (a backlog in CALLPIPE_CALLS?); see .state/run/worker.log"
fi

cat <<TXT

callpipe is running:
  collector  http://$collect_addr/v1/events   (health /healthz, metrics /metrics; log .state/run/collect.log)
TXT
[ -n "${CALLPIPE_PROXY_UPSTREAM:-}" ] && echo "  proxy      http://$proxy_addr → $CALLPIPE_PROXY_UPSTREAM   (log .state/run/proxy.log)"
[ -n "$stages" ] && echo "  worker     stages $stages, http://$worker_addr/healthz   (log .state/run/worker.log)"
echo "  NATS       $CALLPIPE_NATS_URL (stream CALLPIPE_CALLS)"
echo "Ctrl-C stops everything gracefully."
wait
