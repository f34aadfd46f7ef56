#!/usr/bin/env bash
# CPU profile of Herald under a load, as a flamegraph (issue #12): Herald pinned
# to CPU 0, the load generator to CPU 1, `perf record` on Herald's process, the
# stacks folded and drawn by inferno into an SVG for docs/.
#
# Usage: benches/profile.sh [SCENARIO] [OUTPUT.svg]
#   fanin   (default) open mode, 100 QoS 1 publishers -> 1 subscriber, RATE msg/s
#   uplink  device mode with Kafka (127.0.0.1:9092), 1,000 terminals, RATE scans/s
# Environment: RATE (20000 for fanin, 5000 for uplink), SECONDS_TO_RECORD (10),
#   PORT (23883), HTTP (23890), FREQ (perf sampling rate, 499 Hz).
# Needs perf, taskset and inferno (`cargo install inferno`: inferno-collapse-perf,
# inferno-flamegraph on PATH or in INFERNO_BIN). Builds Herald and the load
# generator in release mode. Not part of the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCENARIO=${1:-fanin}
SVG=${2:-docs/images/flamegraph-$SCENARIO.svg}
PORT=${PORT:-23883}
HTTP=${HTTP:-23890}
FREQ=${FREQ:-499}
RECORD=${SECONDS_TO_RECORD:-10}
OUT=target/profile
INFERNO_BIN=${INFERNO_BIN:-}
collapse=${INFERNO_BIN:+$INFERNO_BIN/}inferno-collapse-perf
flamegraph=${INFERNO_BIN:+$INFERNO_BIN/}inferno-flamegraph
for tool in perf taskset "$collapse" "$flamegraph"; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool not found" >&2; exit 1; }
done
case $SCENARIO in
  fanin) RATE=${RATE:-20000}; MODE=open ;;
  uplink) RATE=${RATE:-5000}; MODE=device ;;
  *) echo "profile.sh: unknown scenario $SCENARIO (fanin, uplink)" >&2; exit 2 ;;
esac
FLEET_KEY=$(printf 'herald-benchmark-fleet-key-0000' | base64)
mkdir -p "$OUT" "$(dirname "$SVG")"
cargo build --release --locked -q -p herald -p herald-loadtest
[[ $MODE == device ]] && deploy/kafka/kafka.sh start >/dev/null

cat >"$OUT/herald.toml" <<TOML
[broker]
listen = "127.0.0.1:$PORT"
[broker.auth]
mode = "$MODE"
fleet_key = "$FLEET_KEY"
[broker.admission]
max_connect_rate = 0
[http]
listen = "127.0.0.1:$HTTP"
[log]
filter = "warn"
TOML
taskset -c 0 target/release/herald --config "$OUT/herald.toml" run >"$OUT/herald.log" 2>&1 &
HERALD=$!
trap 'kill $HERALD 2>/dev/null || true; wait $HERALD 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -fs "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

duration=$((RECORD + 8))
if [[ $SCENARIO == fanin ]]; then
  taskset -c 1 target/release/herald-loadtest fanin -p "$PORT" -c 100 -q 1 -r "$RATE" -d "$duration" \
    --client-id "prof-%p-%i" --report "$OUT/$SCENARIO.json" >"$OUT/load.log" 2>&1 &
else
  taskset -c 1 target/release/herald-loadtest uplink -p "$PORT" -c 1000 -R 500 -r "$RATE" -d "$duration" \
    --fleet-key "$FLEET_KEY" --client-id "prof-%p-%i" --report "$OUT/$SCENARIO.json" >"$OUT/load.log" 2>&1 &
fi
LOAD=$!
sleep 5 # connected and publishing at the rate
perf record -F "$FREQ" -g --call-graph dwarf,16384 -p "$HERALD" -o "$OUT/perf.data" -- sleep "$RECORD" \
  2>"$OUT/perf.log"
wait "$LOAD" || true
perf script -i "$OUT/perf.data" 2>/dev/null | "$collapse" >"$OUT/$SCENARIO.folded"
"$flamegraph" --title "Herald, $SCENARIO at $RATE msg/s (CPU 0), $(git rev-parse --short HEAD)" \
  --width 1400 "$OUT/$SCENARIO.folded" >"$SVG"
echo "flamegraph: $SVG (folded stacks: $OUT/$SCENARIO.folded)"
