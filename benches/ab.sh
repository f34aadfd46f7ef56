#!/usr/bin/env bash
# Before/after benchmark of a change: Herald at BASE_REV against the working
# tree, back to back on this machine, the builds alternating, with the working
# tree's load generator for both. What docs/benchmarks.md asks of every change
# on a hot path: memory per session, fan-in throughput and CPU, PUBACK p99.
#
#   fleet   10,000 authenticated idle terminals at 2,000/s: Herald RSS per session
#   fanin   open mode, 100 QoS 1 publishers -> 1 subscriber at 20,000 msg/s for 15 s:
#           PUBACK and delivery p50/p99, Herald CPU seconds
#   uplink  device mode with Kafka, 1,000 terminals, 5,000 scans/s for 20 s:
#           PUBACK-after-Kafka p50/p99/p99.9
#
# Usage: benches/ab.sh BASE_REV [ROUNDS]   (default 2 rounds: base, new, base, new)
#   AB_SCENARIOS="fleet fanin uplink"      the scenarios to run (default all three)
# BASE_REV is built in a git worktree under target/ab/ (its own target dir; the
# first build takes several minutes). Reports: target/ab/<build>-<scenario>-<round>.json;
# a Markdown table on stdout. Uses the Kafka on 127.0.0.1:9092 (kafka.sh start).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BASE_REV=${1:?usage: benches/ab.sh BASE_REV [ROUNDS]}
ROUNDS=${2:-2}
AB_SCENARIOS=${AB_SCENARIOS:-fleet fanin uplink}
runs() { [[ " $AB_SCENARIOS " == *" $1 "* ]]; }
OUT=target/ab
PORT=22883
HTTP=22890
FLEET_KEY=$(printf 'herald-benchmark-fleet-key-0000' | base64)
mkdir -p "$OUT"

base_sha=$(git rev-parse --short "$BASE_REV")
if [[ ! -x $OUT/base-$base_sha/herald ]]; then
  rm -rf "$OUT/worktree"
  git worktree add -f --detach "$OUT/worktree" "$BASE_REV" >/dev/null
  (cd "$OUT/worktree" && cargo build --release --locked -q -p herald --target-dir ../base-target)
  mkdir -p "$OUT/base-$base_sha"
  cp "$OUT/base-target/release/herald" "$OUT/base-$base_sha/herald"
  git worktree remove --force "$OUT/worktree"
fi
cargo build --release --locked -q -p herald -p herald-loadtest
deploy/kafka/kafka.sh start >/dev/null
LT=target/release/herald-loadtest
declare -A BIN=([base]="$OUT/base-$base_sha/herald" [new]=target/release/herald)

config() { # MODE
  cat >"$OUT/herald.toml" <<TOML
[broker]
listen = "127.0.0.1:$PORT"
[broker.auth]
mode = "$1"
fleet_key = "$FLEET_KEY"
[broker.admission]
max_connect_rate = 0
[http]
listen = "127.0.0.1:$HTTP"
[log]
filter = "warn"
TOML
}

HERALD=
start() { # BUILD MODE
  config "$2"
  "${BIN[$1]}" --config "$OUT/herald.toml" run >>"$OUT/herald.log" 2>&1 &
  HERALD=$!
  # Ready: listening, Kafka reachable and (since issue #9) the presence
  # topic replayed, so that the replay's memory is not counted per session.
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  sleep 2
}
stop() { kill "$HERALD" 2>/dev/null || true; wait "$HERALD" 2>/dev/null || true; HERALD=; }
trap stop EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$HERALD/stat"; }

: >"$OUT/herald.log"
for round in $(seq "$ROUNDS"); do
  for build in base new; do
    echo "round $round: $build" >&2
    if runs fleet; then
      start "$build" device
      "$LT" fleet -p "$PORT" -c 10000 -R 2000 --hold 10 --fleet-key "$FLEET_KEY" \
        --broker-pid "$HERALD" --report "$OUT/$build-fleet-$round.json" >/dev/null
      stop
    fi
    if runs fanin; then
      start "$build" open
      before=$(cpu_ticks)
      "$LT" fanin -p "$PORT" -c 100 -q 1 -r 20000 -d 15 --client-id "ab-%p-%i" \
        --report "$OUT/$build-fanin-$round.json" >/dev/null || true
      echo $(($(cpu_ticks) - before)) >"$OUT/$build-fanin-$round.cpu"
      stop
    fi
    if runs uplink; then
      start "$build" device
      "$LT" uplink -p "$PORT" -c 1000 -R 500 -r 5000 -d 20 --fleet-key "$FLEET_KEY" \
        --client-id "ab-%p-%i" --report "$OUT/$build-uplink-$round.json" >/dev/null || true
      stop
    fi
  done
done

python3 - "$OUT" "$ROUNDS" "$base_sha" <<'PY'  # reports of scenarios not run: from earlier runs
import json, os, sys
out, rounds, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
hz = os.sysconf("SC_CLK_TCK")
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return None
def ms(report, series, key):
    p = (report or {}).get("latency_us", {}).get(series)
    return f"{p[key] / 1000:.2f}" if p else "–"
print(f"| build | round | RSS per idle session | fan-in delivered / acked | fan-in PUBACK p50 / p99 ms | fan-in delivery p99 ms | Herald CPU s (fan-in) | uplink PUBACK p50 / p99 / p99.9 ms |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for r in range(1, rounds + 1):
    for build in ("base", "new"):
        fleet = load(f"{build}-fleet-{r}.json") or {}
        fanin = load(f"{build}-fanin-{r}.json") or {}
        uplink = load(f"{build}-uplink-{r}.json")
        f = fanin.get("fanin") or {}
        try:
            cpu = int(open(os.path.join(out, f"{build}-fanin-{r}.cpu")).read()) / hz
        except (OSError, ValueError):
            cpu = float("nan")
        rss = fleet.get("broker_rss_per_connection_bytes")
        label = f"base ({base})" if build == "base" else "new"
        print(f"| {label} | {r} | {rss:,.0f} B | {f.get('received', '–')} / {f.get('acked', '–')} "
              f"| {ms(fanin, 'ack', 'p50')} / {ms(fanin, 'ack', 'p99')} | {ms(fanin, 'e2e', 'p99')} | {cpu:.2f} "
              f"| {ms(uplink, 'ack', 'p50')} / {ms(uplink, 'ack', 'p99')} / {ms(uplink, 'ack', 'p999')} |"
              if rss else f"| {label} | {r} | – | | | | | |")
PY
