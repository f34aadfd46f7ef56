#!/usr/bin/env bash
# Benchmark: idle-session memory and authenticated connects per second.
#
# Builds Herald and herald-loadtest in release mode, starts the local Kafka and
# a Herald with device auth on 127.0.0.1:21883, then connects a fleet of idle
# terminals with real signed credentials at a fixed rate and reports Herald's
# resident memory per session and the connect rate achieved (JSON reports in
# target/bench/). Both run on this machine, so they share its cores.
#
# Usage: benches/fleet.sh [CLIENTS] [RATE]     (defaults: 10000 clients, 2000/s)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLIENTS=${1:-10000}
RATE=${2:-2000}
OUT=target/bench
FLEET_KEY=$(printf 'herald-benchmark-fleet-key-0000' | base64)
mkdir -p "$OUT"

cargo build --release --locked -q -p herald -p herald-loadtest
deploy/kafka/kafka.sh start >/dev/null

cat >"$OUT/herald-bench.toml" <<TOML
[broker]
listen = "127.0.0.1:21883"
[broker.auth]
fleet_key = "$FLEET_KEY"
# Benchmarks measure capacity: the listener's connect-rate limit (5000/s by
# default, docs/reliability.md) is off here.
[broker.admission]
max_connect_rate = 0
[http]
listen = "127.0.0.1:29090"
[log]
filter = "warn"
TOML

target/release/herald --config "$OUT/herald-bench.toml" run 2>"$OUT/herald-bench.log" &
HERALD=$!
trap 'kill $HERALD 2>/dev/null; wait $HERALD 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/21883) 2>/dev/null && break
  sleep 0.1
done
sleep 2 # let Herald and its Kafka client settle before the baseline is read

target/release/herald-loadtest fleet -p 21883 -c "$CLIENTS" -R "$RATE" --hold 15 \
  --fleet-key "$FLEET_KEY" --broker-pid "$HERALD" --report "$OUT/fleet-$CLIENTS-$RATE.json"
