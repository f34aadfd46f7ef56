#!/usr/bin/env bash
# Runs Herald locally with everything it needs: installs dependencies, starts
# the local Kafka, builds, starts the three consumer services in the
# background (logs in .herald/logs/), then runs `herald run` with
# deploy/herald.dev.toml in the foreground: device auth with a development
# fleet key, MQTT on 127.0.0.1:1883, HTTP on :9090. Ctrl-C stops everything.
# Extra arguments go to cargo build (e.g. --release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
deploy/kafka/kafka.sh start >/dev/null
cargo build --locked "$@" --bin herald --bin herald-consumers
profile=debug
[[ " $* " == *" --release "* ]] && profile=release

mkdir -p .herald/logs
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT
trap 'stop; exit 130' INT TERM
port=9191
for service in announcer print-dispatcher scan-processor; do
  HERALD_CONSUMERS_HTTP_LISTEN=127.0.0.1:$port \
    "target/$profile/herald-consumers" "$service" >".herald/logs/$service.log" 2>&1 &
  pids+=($!)
  echo "dev.sh: $service running (metrics on 127.0.0.1:$port, log .herald/logs/$service.log)"
  port=$((port + 1))
done
"target/$profile/herald" --config deploy/herald.dev.toml run &
pids+=($!)
wait "${pids[-1]}"
